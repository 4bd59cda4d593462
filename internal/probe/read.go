package probe

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"
)

// read receives on s until it is closed, handing echo replies (and, on
// raw sockets, ICMP errors about our echo requests) to the waiting Ping.
// A message that is not ours, or malformed, is ignored.
func (p *Pinger) read(s *sock) {
	buf := make([]byte, 65536)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return // closed
		}
		at := time.Now()
		src := addrOf(from)
		p.handle(s, buf[:n], src, at)
	}
}

func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

// ICMP types we read.
const (
	v4EchoReply   = 0
	v4Unreachable = 3
	v4EchoRequest = 8
	v4TimeExceed  = 11
	v6Unreachable = 1
	v6TooBig      = 2
	v6TimeExceed  = 3
	v6EchoRequest = 128
	v6EchoReply   = 129
)

// handle parses one ICMP message (without the IP header: the kernel
// strips IPv6's, and Go's raw IPv4 reads strip IPv4's).
func (p *Pinger) handle(s *sock, b []byte, from netip.Addr, at time.Time) {
	if len(b) < 8 {
		return
	}
	typ, code := int(b[0]), int(b[1])
	reply := v4EchoReply
	if s.v6 {
		reply = v6EchoReply
	}
	if typ == reply {
		id, seq := binary.BigEndian.Uint16(b[4:6]), binary.BigEndian.Uint16(b[6:8])
		data := b[8:]
		// A ping socket's kernel rewrote the identifier and delivers
		// only our replies; on a raw socket every reply is seen.
		if (!s.ping && id != s.id) || len(data) < tokenLen || string(data[:tokenLen]) != string(p.token[:]) {
			return
		}
		p.deliver(s.v6, seq, result{from: from, at: at})
		return
	}
	if s.ping {
		return
	}
	e := &UnreachableError{From: from, V6: s.v6, Type: typ, Code: code}
	var orig []byte
	var about netip.Addr // the offending packet's destination
	switch {
	case !s.v6 && (typ == v4Unreachable || typ == v4TimeExceed):
		if typ == v4Unreachable && code == 4 {
			e.MTU = int(binary.BigEndian.Uint16(b[6:8]))
		}
		orig = b[8:]
		if len(orig) < 20 || orig[0]>>4 != 4 {
			return
		}
		ihl := int(orig[0]&0x0f) * 4
		if ihl < 20 || len(orig) < ihl+8 || orig[9] != 1 { // protocol ICMP
			return
		}
		about, _ = netip.AddrFromSlice(orig[16:20])
		orig = orig[ihl:]
		if orig[0] != v4EchoRequest {
			return
		}
	case s.v6 && (typ == v6Unreachable || typ == v6TooBig || typ == v6TimeExceed):
		if typ == v6TooBig {
			e.MTU = int(binary.BigEndian.Uint32(b[4:8]))
		}
		orig = b[8:]
		// The offending packet's fixed header, then (we send none) no
		// extension headers: ICMPv6 directly.
		if len(orig) < 40+8 || orig[0]>>4 != 6 || orig[6] != 58 {
			return
		}
		about, _ = netip.AddrFromSlice(orig[24:40])
		orig = orig[40:]
		if orig[0] != v6EchoRequest {
			return
		}
	default:
		return
	}
	if binary.BigEndian.Uint16(orig[4:6]) != s.id {
		return
	}
	p.deliver(s.v6, binary.BigEndian.Uint16(orig[6:8]), result{from: about, at: at, err: e})
}
