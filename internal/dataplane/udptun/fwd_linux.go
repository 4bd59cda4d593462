package udptun

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// batchSize is how many packets one sendmmsg/recvmmsg carries.
	batchSize = 32
	// bufSize holds any IPv4 packet: the TUN's MTU may be raised in place,
	// and a peer's MTU is its own. Only the pages a packet touches are
	// ever resident.
	bufSize = 65535
)

// batch is one direction's working memory, allocated once: packet
// buffers, the message headers pointing into them, and the peers'
// addresses. The read and write callbacks are method values made once,
// so calling into the poller allocates nothing either.
type batch struct {
	d       *Device
	tunRaw  syscall.RawConn
	sockRaw syscall.RawConn

	bufs  [batchSize][]byte
	lens  [batchSize]int
	iovs  [batchSize]unix.Iovec
	addrs [batchSize]unix.RawSockaddrInet4
	hs    [batchSize]mmsghdr

	n, off int   // messages in hs; next to write
	err    error // a callback's failure

	readTUN, writeSock, readSock, writeTUN func(fd uintptr) bool
}

func newBatch(d *Device, tunRaw, sockRaw syscall.RawConn) *batch {
	b := &batch{d: d, tunRaw: tunRaw, sockRaw: sockRaw}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, bufSize)
		b.iovs[i].Base = &b.bufs[i][0]
		b.hs[i].hdr.Iov = &b.iovs[i]
		b.hs[i].hdr.Iovlen = 1
	}
	b.readTUN, b.writeSock, b.readSock, b.writeTUN = b.readTUNOnce, b.writeSockOnce, b.readSockOnce, b.writeTUNOnce
	return b
}

// runTx forwards packets from the TUN to the peers until the device ends.
func (b *batch) runTx() error {
	d := b.d
	for {
		b.n, b.err = 0, nil
		if err := b.tunRaw.Read(b.readTUN); err != nil {
			return fmt.Errorf("read tun: %w", err)
		}
		if b.err != nil && b.n == 0 {
			return fmt.Errorf("read tun: %w", b.err)
		}
		// Route the burst; the messages to send are packed to the front.
		t := d.table.Load()
		m := 0
		var bytes uint64
		for i := 0; i < b.n; i++ {
			pkt := b.bufs[i][:b.lens[i]]
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
				b.iovs[m].Base = &b.bufs[m][0]
				b.iovs[i].Base = &b.bufs[i][0]
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

// readTUNOnce reads packets until the TUN has none left or the batch is
// full; false (nothing read) makes the poller wait for readability.
func (b *batch) readTUNOnce(fd uintptr) bool {
	for b.n < batchSize {
		k, err := unix.Read(int(fd), b.bufs[b.n])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return b.n > 0
		case err != nil:
			b.err = err
			return true
		}
		b.lens[b.n] = k
		b.n++
	}
	return true
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
			b.iovs[i].SetLen(bufSize)
		}
		b.n, b.err = 0, nil
		if err := b.sockRaw.Read(b.readSock); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if b.err != nil {
			d.log.Debug("receive", "err", b.err)
			continue
		}
		// Check each packet; the ones to write get lens[i] > 0.
		for i := 0; i < b.n; i++ {
			k := int(b.hs[i].n)
			pkt := b.bufs[i][:k]
			b.lens[i] = 0
			if b.hs[i].hdr.Flags&unix.MSG_TRUNC != 0 || !ipv4Header(pkt) || !decTTL(pkt) {
				d.dropped.Add(1)
				continue
			}
			b.lens[i] = k
		}
		b.off = 0
		if err := b.tunRaw.Write(b.writeTUN); err != nil {
			return fmt.Errorf("write tun: %w", err)
		}
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

// writeTUNOnce writes the checked packets, one write(2) each; false (the
// TUN's queue is full) makes the poller wait.
func (b *batch) writeTUNOnce(fd uintptr) bool {
	d := b.d
	for ; b.off < b.n; b.off++ {
		k := b.lens[b.off]
		if k == 0 {
			continue
		}
		_, err := unix.Write(int(fd), b.bufs[b.off][:k])
		switch {
		case err == unix.EINTR:
			b.off--
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			d.dropped.Add(1)
			continue
		}
		d.rxPackets.Add(1)
		d.rxBytes.Add(uint64(k))
	}
	return true
}
