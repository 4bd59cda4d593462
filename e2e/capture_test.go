package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// capture records every frame seen on one interface of one namespace,
// through an AF_PACKET socket opened there: what a tcpdump on the
// underlay would show, without needing tcpdump.
type capture struct {
	fd       int
	stopping atomic.Bool
	mu       sync.Mutex
	frames   [][]byte
	done     chan struct{}
	closed   bool
}

// startCapture captures on dev in namespace ns until stop.
func startCapture(t *testing.T, ns, dev string) *capture {
	t.Helper()
	c := &capture{fd: -1, done: make(chan struct{})}
	inNS(t, ns, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	go c.read()
	t.Cleanup(func() { c.stop() })
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read runs until stop: the socket's receive timeout lets it notice.
func (c *capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for !c.stopping.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return
		}
		c.mu.Lock()
		c.frames = append(c.frames, bytes.Clone(buf[:n]))
		c.mu.Unlock()
	}
}

// stop ends the capture and returns the frames seen.
func (c *capture) stop() [][]byte {
	c.stopping.Store(true)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		unix.Close(c.fd)
		c.closed = true
	}
	return c.frames
}

// packet is the part of a captured frame the tests look at.
type packet struct {
	src, dst         netip.Addr
	proto            uint8 // IP protocol (next header, for IPv6 without extension headers)
	srcPort, dstPort uint16
	payload          []byte // after the IP header
}

// parseFrame decodes an Ethernet frame carrying IPv4 or IPv6.
func parseFrame(f []byte) (packet, bool) {
	if len(f) < 14 {
		return packet{}, false
	}
	var p packet
	b := f[14:]
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0800:
		if len(b) < 20 {
			return p, false
		}
		ihl := int(b[0]&0x0f) * 4
		if len(b) < ihl {
			return p, false
		}
		p.src, _ = netip.AddrFromSlice(b[12:16])
		p.dst, _ = netip.AddrFromSlice(b[16:20])
		p.proto, p.payload = b[9], b[ihl:]
	case 0x86dd:
		if len(b) < 40 {
			return p, false
		}
		p.src, _ = netip.AddrFromSlice(b[8:24])
		p.dst, _ = netip.AddrFromSlice(b[24:40])
		p.proto, p.payload = b[6], b[40:]
	default:
		return p, false
	}
	if (p.proto == unix.IPPROTO_UDP || p.proto == unix.IPPROTO_TCP) && len(p.payload) >= 4 {
		p.srcPort = binary.BigEndian.Uint16(p.payload[0:2])
		p.dstPort = binary.BigEndian.Uint16(p.payload[2:4])
	}
	return p, true
}
