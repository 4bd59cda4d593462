package udptun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// batchSize is how many packets one TUN read may yield (a 64 KiB TCP
	// burst split at the MTU), and how many datagrams are handed to the
	// TUN code per write.
	batchSize = 128
	// headroom is the space before each packet: the TUN code puts the
	// virtio-net header (10 bytes) there when it writes.
	headroom = 16
	// bufSize holds any IPv4 packet after the headroom: the TUN's MTU may
	// be raised in place, and a peer's MTU is its own. Only the pages a
	// packet touches are ever resident.
	bufSize = headroom + 65535
	// rxMsgs is how many (possibly GRO-coalesced) datagrams one
	// recvmmsg takes.
	rxMsgs = 32
	// gsoMaxSegs and gsoMaxBytes bound one UDP GSO send (the kernel's
	// UDP_MAX_SEGMENTS is 64 on older kernels; the payload must fit a
	// UDP length).
	gsoMaxSegs  = 64
	gsoMaxBytes = 65507
)

// UDP segmentation offload (UDP_SEGMENT) on send and receive offload
// (UDP_GRO): a run of equal-sized packets to one peer — a TCP burst the
// TUN handed us in one read — goes to the kernel as one buffer that it
// cuts into datagrams (on the wire, or in the receiver's NIC), and
// datagrams of one flow arrive coalesced, cut into packets by us. On the
// wire each datagram is still one packet, so upstream's proxy, which uses
// neither, reads them as always. A kernel or route that refuses GSO turns
// it off for the device (the one burst it refused is lost, and TCP sends
// it again).

// cmsgU16 is a control message carrying one 16-bit value (UDP_SEGMENT).
type cmsgU16 [unix.SizeofCmsghdr + 8]byte

// txBatch is the send direction's working memory, allocated once.
type txBatch struct {
	d       *Device
	sockRaw syscall.RawConn

	bufs [batchSize][]byte // packets read from the TUN, after headroom
	lens [batchSize]int
	eps  [batchSize]netip.AddrPort // each routed packet's peer

	gso   [batchSize][]byte // contiguous runs for GSO sends
	iovs  [batchSize]unix.Iovec
	addrs [batchSize]unix.RawSockaddrInet4
	oob   [batchSize]cmsgU16
	hs    [batchSize]mmsghdr
	segs  [batchSize]int // packets in each message

	n, off    int // messages in hs; next to send
	writeSock func(fd uintptr) bool
}

func newTxBatch(d *Device, sockRaw syscall.RawConn) *txBatch {
	b := &txBatch{d: d, sockRaw: sockRaw}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, bufSize)
		b.gso[i] = make([]byte, gsoMaxBytes)
		b.hs[i].hdr.Iov = &b.iovs[i]
		b.hs[i].hdr.Iovlen = 1
		b.hs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
		b.hs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b.oob[i][0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
	}
	b.writeSock = b.writeSockOnce
	return b
}

// runTx forwards packets from the TUN to the peers until the device ends.
func (b *txBatch) runTx() error {
	d := b.d
	failures := 0 // consecutive failed reads
	for {
		n, err := d.tun.Read(b.bufs[:], b.lens[:], headroom)
		switch {
		case errors.Is(err, os.ErrClosed):
			return fmt.Errorf("read tun: %w", err)
		case err != nil && n == 0:
			// A packet the TUN code could not split (malformed offload
			// metadata) fails alone; an error that persists ends the
			// device, for the dataplane to make it again.
			if failures++; failures == 1000 {
				return fmt.Errorf("read tun: %w", err)
			}
			d.dropped.Add(1)
			continue
		}
		failures = 0
		// Route the burst; the packets to send are packed to the front.
		t := d.table.Load()
		m := 0
		var bytes uint64
		for i := 0; i < n; i++ {
			pkt := b.bufs[i][headroom : headroom+b.lens[i]]
			if !ipv4Header(pkt) {
				d.dropped.Add(1)
				continue
			}
			ep, ok := t.lookup([4]byte(pkt[16:20]))
			if !ok {
				d.noPeer.Add(1)
				continue
			}
			if !decTTL(pkt) {
				d.dropped.Add(1)
				continue
			}
			if m != i {
				b.bufs[i], b.bufs[m] = b.bufs[m], b.bufs[i]
			}
			b.lens[m], b.eps[m] = len(pkt), ep
			bytes += uint64(len(pkt))
			m++
		}
		if m == 0 {
			continue
		}
		b.n, b.off = b.pack(m, !d.noGSO.Load()), 0
		if err := b.sockRaw.Write(b.writeSock); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		d.txPackets.Add(uint64(m))
		d.txBytes.Add(bytes)
	}
}

// pack builds the messages for the m routed packets and returns their
// number: with gso, each run of packets to one peer of one size (and a
// shorter last one) is copied into one buffer sent with UDP_SEGMENT; a
// packet alone is sent from where it was read.
func (b *txBatch) pack(m int, gso bool) int {
	msgs := 0
	for i := 0; i < m; {
		ep, size := b.eps[i], b.lens[i]
		j := i + 1
		if gso {
			total := size
			for j < m && j-i < gsoMaxSegs && b.eps[j] == ep && b.lens[j] <= size && total+b.lens[j] <= gsoMaxBytes {
				total += b.lens[j]
				j++
				if b.lens[j-1] < size {
					break // a shorter packet ends a run
				}
			}
		}
		h := &b.hs[msgs]
		if j-i == 1 {
			b.iovs[msgs].Base = &b.bufs[i][headroom]
			b.iovs[msgs].SetLen(size)
			h.hdr.Control, h.hdr.Controllen = nil, 0
		} else {
			buf, off := b.gso[msgs], 0
			for k := i; k < j; k++ {
				off += copy(buf[off:], b.bufs[k][headroom:headroom+b.lens[k]])
			}
			b.iovs[msgs].Base = &buf[0]
			b.iovs[msgs].SetLen(off)
			binary.NativeEndian.PutUint16(b.oob[msgs][unix.SizeofCmsghdr:], uint16(size))
			h.hdr.Control = &b.oob[msgs][0]
			h.hdr.SetControllen(unix.CmsgSpace(2))
		}
		sa := &b.addrs[msgs]
		sa.Family = unix.AF_INET
		port := (*[2]byte)(unsafe.Pointer(&sa.Port))
		port[0], port[1] = byte(ep.Port()>>8), byte(ep.Port())
		sa.Addr = ep.Addr().As4()
		b.segs[msgs] = j - i
		msgs++
		i = j
	}
	return msgs
}

// writeSockOnce sends hs[off:n]; false (the socket buffer is full) makes
// the poller wait for writability. A message the kernel refuses (no
// route to the peer; GSO it cannot do) is dropped and counted.
func (b *txBatch) writeSockOnce(fd uintptr) bool {
	for b.off < b.n {
		k, e := mmsg(unix.SYS_SENDMMSG, fd, b.hs[b.off:b.n], unix.MSG_DONTWAIT)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			if b.segs[b.off] > 1 && (e == unix.EIO || e == unix.EINVAL || e == unix.EOPNOTSUPP || e == unix.ENOPROTOOPT) {
				if !b.d.noGSO.Swap(true) {
					b.d.log.Info("udp segmentation offload refused; sending one datagram per packet", "err", e)
				}
			}
			b.d.dropped.Add(uint64(b.segs[b.off]))
			b.off++ // the first message failed: skip it
			continue
		}
		b.off += k
	}
	return true
}

// rxBatch is the receive direction's working memory, allocated once.
type rxBatch struct {
	d       *Device
	sockRaw syscall.RawConn

	msgs [rxMsgs][]byte // datagrams (coalesced with GRO), after headroom
	iovs [rxMsgs]unix.Iovec
	oob  [rxMsgs][unix.SizeofCmsghdr + 8]byte
	hs   [rxMsgs]mmsghdr

	pkts [batchSize][]byte // packets cut from coalesced datagrams
	out  [][]byte          // packets for the next TUN write
	used int               // pkts in use by out

	n, bytes int
	err      error
	readSock func(fd uintptr) bool
}

func newRxBatch(d *Device, sockRaw syscall.RawConn) *rxBatch {
	b := &rxBatch{d: d, sockRaw: sockRaw, out: make([][]byte, 0, batchSize)}
	for i := range b.msgs {
		b.msgs[i] = make([]byte, bufSize)
		b.iovs[i].Base = &b.msgs[i][headroom]
		b.hs[i].hdr.Iov = &b.iovs[i]
		b.hs[i].hdr.Iovlen = 1
		b.hs[i].hdr.Control = &b.oob[i][0]
	}
	for i := range b.pkts {
		b.pkts[i] = make([]byte, bufSize)
	}
	b.readSock = b.readSockOnce
	return b
}

// runRx writes the packets arriving from peers into the TUN until the
// device ends.
func (b *rxBatch) runRx() error {
	d := b.d
	for {
		for i := range b.hs {
			b.iovs[i].SetLen(bufSize - headroom)
			b.hs[i].hdr.SetControllen(len(b.oob[i]))
		}
		b.n, b.err = 0, nil
		if err := b.sockRaw.Read(b.readSock); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if b.err != nil {
			d.log.Debug("receive", "err", b.err)
			continue
		}
		b.out, b.used, b.bytes = b.out[:0], 0, 0
		for i := 0; i < b.n; i++ {
			h := &b.hs[i].hdr
			k := int(b.hs[i].n)
			if h.Flags&unix.MSG_TRUNC != 0 {
				d.dropped.Add(1)
				continue
			}
			seg := groSize(b.oob[i][:h.Controllen])
			if seg == 0 || seg >= k {
				// One datagram: written from where it was received.
				if err := b.add(b.msgs[i][:headroom+k]); err != nil {
					return err
				}
				continue
			}
			for off := 0; off < k; off += seg {
				pkt := b.msgs[i][headroom+off : headroom+min(off+seg, k)]
				if b.used == len(b.pkts) {
					if err := b.flush(); err != nil {
						return err
					}
				}
				p := b.pkts[b.used]
				b.used++
				if err := b.add(p[:headroom+copy(p[headroom:], pkt)]); err != nil {
					return err
				}
			}
		}
		if err := b.flush(); err != nil {
			return err
		}
	}
}

// add checks the packet in buf (after the headroom) and queues it for the
// TUN, writing the queue first when it is full.
func (b *rxBatch) add(buf []byte) error {
	pkt := buf[headroom:]
	if !ipv4Header(pkt) || !decTTL(pkt) {
		b.d.dropped.Add(1)
		return nil
	}
	if len(b.out) == cap(b.out) {
		if err := b.flush(); err != nil {
			return err
		}
	}
	b.out = append(b.out, buf)
	b.bytes += len(pkt)
	return nil
}

// flush writes the queued packets into the TUN, which coalesces those of
// one flow into one write.
func (b *rxBatch) flush() error {
	d := b.d
	if len(b.out) == 0 {
		return nil
	}
	_, err := d.tun.Write(b.out, headroom)
	switch {
	case errors.Is(err, os.ErrClosed):
		return fmt.Errorf("write tun: %w", err)
	case err != nil:
		// Some packets were refused (the TUN is down, a malformed one):
		// the count is not known, so all are counted as dropped.
		d.dropped.Add(uint64(len(b.out)))
	default:
		d.rxPackets.Add(uint64(len(b.out)))
		d.rxBytes.Add(uint64(b.bytes))
	}
	b.out, b.used, b.bytes = b.out[:0], 0, 0
	return nil
}

// groSize returns the segment size of a coalesced datagram from its
// control messages (UDP_GRO), or 0.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(binary.NativeEndian.Uint32(oob[unix.SizeofCmsghdr:])) // an int
		}
		oob = oob[min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(oob)):]
	}
	return 0
}

// readSockOnce receives up to a batch of datagrams.
func (b *rxBatch) readSockOnce(fd uintptr) bool {
	for {
		k, e := mmsg(unix.SYS_RECVMMSG, fd, b.hs[:], unix.MSG_DONTWAIT)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			b.err = e
			return true
		}
		b.n = k
		return true
	}
}
