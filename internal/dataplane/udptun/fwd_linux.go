package udptun

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// batchSize is how many packets one TUN read may yield (a 64 KiB TCP
	// burst split at the MTU), and one sendmmsg/recvmmsg carries.
	batchSize = 128
	// headroom is the space before each packet: the TUN code puts the
	// virtio-net header (10 bytes) there when it writes.
	headroom = 16
	// bufSize holds any IPv4 packet after the headroom: the TUN's MTU may
	// be raised in place, and a peer's MTU is its own. Only the pages a
	// packet touches are ever resident.
	bufSize = headroom + 65535
)

// batch is one direction's working memory, allocated once: packet
// buffers, the message headers pointing into them, and the peers'
// addresses. The socket callbacks are method values made once, so
// calling into the poller allocates nothing either.
type batch struct {
	d       *Device
	sockRaw syscall.RawConn

	bufs  [batchSize][]byte
	lens  [batchSize]int
	iovs  [batchSize]unix.Iovec
	addrs [batchSize]unix.RawSockaddrInet4
	hs    [batchSize]mmsghdr
	out   [][]byte // packets to write to the TUN (rx)

	n, off int   // messages in hs; next to send
	err    error // a callback's failure

	writeSock, readSock func(fd uintptr) bool
}

func newBatch(d *Device, sockRaw syscall.RawConn) *batch {
	b := &batch{d: d, sockRaw: sockRaw, out: make([][]byte, 0, batchSize)}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, bufSize)
		b.iovs[i].Base = &b.bufs[i][headroom]
		b.hs[i].hdr.Iov = &b.iovs[i]
		b.hs[i].hdr.Iovlen = 1
	}
	b.writeSock, b.readSock = b.writeSockOnce, b.readSockOnce
	return b
}

// runTx forwards packets from the TUN to the peers until the device ends.
func (b *batch) runTx() error {
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
		// Route the burst; the messages to send are packed to the front.
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
				b.iovs[m].Base = &b.bufs[m][headroom]
				b.iovs[i].Base = &b.bufs[i][headroom]
			}
			b.iovs[m].SetLen(len(pkt))
			sa := &b.addrs[m]
			sa.Family = unix.AF_INET
			port := (*[2]byte)(unsafe.Pointer(&sa.Port))
			port[0], port[1] = byte(ep.Port()>>8), byte(ep.Port())
			sa.Addr = ep.Addr().As4()
			b.hs[m].hdr.Name = (*byte)(unsafe.Pointer(sa))
			b.hs[m].hdr.Namelen = unix.SizeofSockaddrInet4
			bytes += uint64(len(pkt))
			m++
		}
		if m == 0 {
			continue
		}
		b.n, b.off, b.err = m, 0, nil
		if err := b.sockRaw.Write(b.writeSock); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		d.txPackets.Add(uint64(b.off))
		d.txBytes.Add(bytes)
	}
}

// writeSockOnce sends hs[off:n]; false (the socket buffer is full) makes
// the poller wait for writability. A message the kernel refuses (no
// route to the peer) is dropped and counted.
func (b *batch) writeSockOnce(fd uintptr) bool {
	for b.off < b.n {
		k, e := mmsg(unix.SYS_SENDMMSG, fd, b.hs[b.off:b.n], unix.MSG_DONTWAIT)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			b.d.dropped.Add(1)
			b.off++ // the first message failed: skip it
			continue
		}
		b.off += k
	}
	return true
}

// runRx writes the packets arriving from peers into the TUN until the
// device ends.
func (b *batch) runRx() error {
	d := b.d
	for i := range b.hs {
		b.hs[i].hdr.Name = nil // the sender's address is not needed
		b.hs[i].hdr.Namelen = 0
	}
	for {
		for i := range b.hs {
			b.iovs[i].SetLen(bufSize - headroom)
		}
		b.n, b.err = 0, nil
		if err := b.sockRaw.Read(b.readSock); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if b.err != nil {
			d.log.Debug("receive", "err", b.err)
			continue
		}
		b.out = b.out[:0]
		var bytes uint64
		for i := 0; i < b.n; i++ {
			k := int(b.hs[i].n)
			pkt := b.bufs[i][headroom : headroom+k]
			if b.hs[i].hdr.Flags&unix.MSG_TRUNC != 0 || !ipv4Header(pkt) || !decTTL(pkt) {
				d.dropped.Add(1)
				continue
			}
			b.out = append(b.out, b.bufs[i][:headroom+k])
			bytes += uint64(k)
		}
		if len(b.out) == 0 {
			continue
		}
		if _, err := d.tun.Write(b.out, headroom); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return fmt.Errorf("write tun: %w", err)
			}
			// Some packets were refused (the TUN is down, a malformed
			// one): the count is not known, so all are counted as dropped.
			d.dropped.Add(uint64(len(b.out)))
			continue
		}
		d.rxPackets.Add(uint64(len(b.out)))
		d.rxBytes.Add(bytes)
	}
}

// readSockOnce receives up to a batch of datagrams.
func (b *batch) readSockOnce(fd uintptr) bool {
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
