// Package probe sends ICMP echo requests from Go (golang.org/x/net/icmp
// for the messages, sockets of its own for the options) and, on top of
// that, probes a changing set of targets continuously (Prober): the
// daemon's peer reachability (`weft status` "cluster health"), the demo's
// ping matrix, and `weft doctor`'s path-MTU check.
//
// # Pinger
//
// A Pinger owns one ICMP socket per family, opened in the network
// namespace of the calling thread (open it inside nsrun.Do to ping from
// another namespace; the socket stays there). It prefers raw sockets
// (root or CAP_NET_RAW), which also deliver the ICMP errors a probe
// provokes (destination unreachable, fragmentation needed / packet too
// big, time exceeded); without the capability it falls back to the
// kernel's unprivileged ping sockets (net.ipv4.ping_group_range must
// include the process's group), which deliver replies only. Many
// goroutines may Ping at once, and Start probes without a goroutine
// waiting: one reader per socket hands each reply to the probe it
// answers, matched by identifier, sequence number, source address and an
// 8-byte token of this Pinger in the payload.
//
// Ping's Options set the size of the whole IP packet (headers included,
// so a probe of the pod MTU is PacketSize = MTU) and the don't-fragment
// bit (IPv4: IP_MTU_DISCOVER = IP_PMTUDISC_DO; IPv6, where routers never
// fragment: IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DO, so the sender does not
// either). With DontFragment a packet larger than the MTU the kernel
// knows for the path fails at once with an error that errors.Is
// syscall.EMSGSIZE; one that a router on the path cannot forward comes
// back (raw sockets) as an *UnreachableError with the next-hop MTU.
// A probe that gets no answer within its timeout fails with ErrTimeout.
package probe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// ErrTimeout: no reply within the probe's timeout.
var ErrTimeout = errors.New("no reply")

// UnreachableError is an ICMP error a router or the target sent back for
// a probe (raw sockets only): destination unreachable, time exceeded,
// and for IPv6 packet too big.
type UnreachableError struct {
	From netip.Addr // who reported it
	V6   bool
	Type int // ICMP (ICMPv6) type
	Code int
	// MTU is the next-hop MTU of a "fragmentation needed" (IPv4 type 3
	// code 4) or "packet too big" (ICMPv6 type 2); 0 otherwise.
	MTU int
}

func (e *UnreachableError) Error() string {
	switch {
	case e.MTU > 0:
		return fmt.Sprintf("packet too big: next-hop MTU %d (reported by %s)", e.MTU, e.From)
	case !e.V6 && e.Type == 3:
		return fmt.Sprintf("destination unreachable, code %d (reported by %s)", e.Code, e.From)
	case e.V6 && e.Type == 1:
		return fmt.Sprintf("destination unreachable, code %d (reported by %s)", e.Code, e.From)
	case !e.V6 && e.Type == 11, e.V6 && e.Type == 3:
		return fmt.Sprintf("time exceeded (reported by %s)", e.From)
	}
	return fmt.Sprintf("icmp error type %d code %d (reported by %s)", e.Type, e.Code, e.From)
}

// Options are one probe's.
type Options struct {
	// PacketSize is the size of the whole IP packet, IP and ICMP headers
	// included (IPv4: 20 + 8 + payload; IPv6: 40 + 8 + payload). 0 means
	// 64; less than the headers and the 8-byte token is raised to that.
	PacketSize int
	// DontFragment forbids fragmenting the packet (see the package doc).
	DontFragment bool
	// Timeout bounds the wait for the reply; 0 means one second. The
	// context may end the wait sooner.
	Timeout time.Duration
}

const (
	tokenLen       = 8
	defaultSize    = 64
	defaultTimeout = time.Second
	headerV4       = 20 + 8
	headerV6       = 40 + 8
	rcvBuf         = 4 << 20
)

// Pinger sends echo requests and matches their replies; see the package
// doc. Its zero value is not usable: Open one.
type Pinger struct {
	token [tokenLen]byte
	v4    *sock
	v6    *sock
	err4  error // why v4 is nil
	err6  error

	mu      sync.Mutex
	seq     uint16
	waiting map[waitKey]*waiter

	readers sync.WaitGroup
}

type waitKey struct {
	v6  bool
	seq uint16
}

// waiter is a probe in flight: a few hundred bytes with its timers, where
// a goroutine blocked in a call would take its stack (thousands of
// probes are in flight when thousands of peers do not answer).
type waiter struct {
	dst   netip.Addr
	start time.Time
	timer *time.Timer
	stop  func() bool // the context's AfterFunc
	done  func(time.Duration, error)
	// seqKey is its entry in Pinger.waiting.
	seqKey waitKey
}

type result struct {
	// from is the replying address; for an ICMP error, the destination
	// of the probe it is about.
	from netip.Addr
	at   time.Time
	err  error
}

// sock is one family's socket.
type sock struct {
	conn net.PacketConn
	raw  syscall.RawConn
	v6   bool
	// ping is true for an unprivileged ping socket: the kernel sets the
	// identifier and delivers only our replies, and no ICMP errors.
	ping bool
	id   uint16

	sendMu sync.Mutex
	df     bool // the socket's current don't-fragment setting
}

// Open opens a Pinger in the calling thread's network namespace. It
// fails only when neither family could be opened; a family that could
// not is reported by Ping for its addresses.
func Open() (*Pinger, error) { return open(false) }

// open is Open; pingOnly skips raw sockets (tests of the fallback).
func open(pingOnly bool) (*Pinger, error) {
	p := &Pinger{waiting: map[waitKey]*waiter{}}
	if _, err := rand.Read(p.token[:]); err != nil {
		return nil, fmt.Errorf("probe: random token: %w", err)
	}
	var idb [2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, fmt.Errorf("probe: random id: %w", err)
	}
	id := binary.BigEndian.Uint16(idb[:])
	p.v4, p.err4 = openSock(false, id, pingOnly)
	p.v6, p.err6 = openSock(true, id, pingOnly)
	if p.v4 == nil && p.v6 == nil {
		return nil, fmt.Errorf("probe: open ICMP sockets: %w", errors.Join(p.err4, p.err6))
	}
	for _, s := range []*sock{p.v4, p.v6} {
		if s != nil {
			p.readers.Go(func() { p.read(s) })
		}
	}
	return p, nil
}

// Privileged reports whether the Pinger uses raw sockets (and so sees
// ICMP errors).
func (p *Pinger) Privileged() bool {
	for _, s := range []*sock{p.v4, p.v6} {
		if s != nil {
			return !s.ping
		}
	}
	return false
}

// Close closes the sockets; pending Pings fail. It waits for the readers.
func (p *Pinger) Close() error {
	var errs []error
	for _, s := range []*sock{p.v4, p.v6} {
		if s != nil {
			errs = append(errs, s.conn.Close())
		}
	}
	p.readers.Wait()
	return errors.Join(errs...)
}

// openSock opens a raw ICMP socket, or else an unprivileged ping socket.
func openSock(v6 bool, id uint16, pingOnly bool) (*sock, error) {
	network, addr := "ip4:icmp", "0.0.0.0"
	if v6 {
		network, addr = "ip6:ipv6-icmp", "::"
	}
	rawErr := errors.New("not tried")
	if !pingOnly {
		var c net.PacketConn
		if c, rawErr = net.ListenPacket(network, addr); rawErr == nil {
			return newSock(c, v6, false, id)
		}
	}
	c, err := listenPingSocket(v6)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w; ping socket: %w", rawErr, err)
	}
	s, err := newSock(c, v6, true, 0)
	if err != nil {
		return nil, err
	}
	// The kernel uses the socket's local port as the echo identifier.
	if ua, ok := c.LocalAddr().(*net.UDPAddr); ok {
		s.id = uint16(ua.Port)
	}
	return s, nil
}

func newSock(c net.PacketConn, v6, ping bool, id uint16) (*sock, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("probe: %T has no file descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("probe: %w", err)
	}
	s := &sock{conn: c, raw: raw, v6: v6, ping: ping, id: id}
	// A known starting point (the kernel's default may set DF).
	if err := s.setDF(false); err != nil {
		c.Close()
		return nil, err
	}
	// Room for bursts: a raw socket also receives every other ICMP
	// message of the host, and a full buffer drops replies. FORCE (root)
	// may exceed net.core.rmem_max; else the plain one, capped by it.
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
		}
	})
	return s, nil
}

// listenPingSocket opens an unprivileged ICMP "ping" socket (SOCK_DGRAM,
// IPPROTO_ICMP / IPPROTO_ICMPV6) as a net.PacketConn.
func listenPingSocket(v6 bool) (net.PacketConn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if v6 {
		family, proto, sa = unix.AF_INET6, unix.IPPROTO_ICMPV6, &unix.SockaddrInet6{}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind: %w", err)
	}
	f := os.NewFile(uintptr(fd), "icmp")
	defer f.Close() // FilePacketConn dups it
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("ping socket: %w", err)
	}
	return c, nil
}

// Ping sends one echo request to dst and waits for its reply, returning
// the round-trip time. Errors: ErrTimeout, an *UnreachableError, the
// send's error (EMSGSIZE with DontFragment and a packet above the known
// path MTU), or ctx's.
func (p *Pinger) Ping(ctx context.Context, dst netip.Addr, o Options) (time.Duration, error) {
	type outcome struct {
		rtt time.Duration
		err error
	}
	ch := make(chan outcome, 1)
	p.Start(ctx, dst, o, func(rtt time.Duration, err error) { ch <- outcome{rtt, err} })
	r := <-ch
	return r.rtt, r.err
}

// Start sends one echo request to dst and returns; done is called once
// with what Ping would return, on another goroutine (the socket's reader
// or a timer), or on this one when nothing could be sent. done must not
// block. No goroutine waits meanwhile.
func (p *Pinger) Start(ctx context.Context, dst netip.Addr, o Options, done func(time.Duration, error)) {
	dst = dst.Unmap()
	if !dst.IsValid() {
		done(0, errors.New("probe: no address"))
		return
	}
	v6 := dst.Is6()
	s, serr := p.v4, p.err4
	if v6 {
		s, serr = p.v6, p.err6
	}
	if s == nil {
		done(0, fmt.Errorf("probe: no ICMP socket for %s: %w", dst, serr))
		return
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	w := &waiter{dst: dst, done: done}
	// Registered, then its timers set, under one hold of the lock: a
	// timer firing at once (a context already done) waits for it and
	// finds the waiter whole. No reply can come before the send.
	p.mu.Lock()
	seq, err := p.register(v6, w)
	if err != nil {
		p.mu.Unlock()
		done(0, err)
		return
	}
	w.timer = time.AfterFunc(timeout, func() {
		p.finish(w, 0, fmt.Errorf("%w from %s within %s", ErrTimeout, dst, timeout))
	})
	w.stop = context.AfterFunc(ctx, func() { p.finish(w, 0, ctx.Err()) })
	p.mu.Unlock()
	msg, err := p.echo(s, seq, o.PacketSize)
	if err != nil {
		p.finish(w, 0, err)
		return
	}
	p.mu.Lock()
	w.start = time.Now()
	p.mu.Unlock()
	if err := s.send(msg, dst, o.DontFragment); err != nil {
		p.finish(w, 0, fmt.Errorf("send echo to %s: %w", dst, err))
	}
}

// register takes a free sequence number for w; p.mu is held.
func (p *Pinger) register(v6 bool, w *waiter) (uint16, error) {
	for range 1 << 16 {
		p.seq++
		k := waitKey{v6, p.seq}
		if _, busy := p.waiting[k]; !busy {
			p.waiting[k] = w
			w.seqKey = k
			return p.seq, nil
		}
	}
	return 0, errors.New("probe: 65,536 probes in flight")
}

// finish ends w's probe with its outcome, unless it has one already.
func (p *Pinger) finish(w *waiter, rtt time.Duration, err error) {
	p.mu.Lock()
	if p.waiting[w.seqKey] != w {
		p.mu.Unlock()
		return
	}
	delete(p.waiting, w.seqKey)
	timer, stop := w.timer, w.stop
	p.mu.Unlock()
	timer.Stop()
	stop()
	w.done(rtt, err)
}

// deliver hands r to the probe waiting for seq, if any: a reply from its
// destination, or an ICMP error about it.
func (p *Pinger) deliver(v6 bool, seq uint16, r result) {
	p.mu.Lock()
	w := p.waiting[waitKey{v6, seq}]
	if w == nil || r.from != w.dst {
		// None, or about a probe of the same sequence to elsewhere; a
		// duplicate reply finds none.
		p.mu.Unlock()
		return
	}
	start := w.start
	p.mu.Unlock()
	if r.err != nil {
		p.finish(w, 0, r.err)
		return
	}
	p.finish(w, r.at.Sub(start), nil)
}

// echo builds an echo request whose IP packet is size bytes long.
func (p *Pinger) echo(s *sock, seq uint16, size int) ([]byte, error) {
	hdr := headerV4
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if s.v6 {
		hdr, typ = headerV6, ipv6.ICMPTypeEchoRequest
	}
	if size <= 0 {
		size = defaultSize
	}
	data := make([]byte, max(size-hdr, tokenLen))
	copy(data, p.token[:])
	for i := tokenLen; i < len(data); i++ {
		data[i] = byte(i)
	}
	m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(s.id), Seq: int(seq), Data: data}}
	// ICMPv6 checksums need the pseudo header, which the kernel fills in
	// for ICMPv6 sockets; Marshal(nil) leaves it zero.
	b, err := m.Marshal(nil)
	if err != nil {
		return nil, fmt.Errorf("probe: marshal echo: %w", err)
	}
	return b, nil
}

// send writes one message, setting the don't-fragment option first when
// it differs from the socket's current one.
func (s *sock) send(b []byte, dst netip.Addr, df bool) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if df != s.df {
		if err := s.setDF(df); err != nil {
			return err
		}
		s.df = df
	}
	var to net.Addr = &net.IPAddr{IP: dst.AsSlice()}
	if s.ping {
		to = &net.UDPAddr{IP: dst.AsSlice()}
	}
	_, err := s.conn.WriteTo(b, to)
	return err
}

func (s *sock) setDF(df bool) error {
	level, opt, on, off := unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO, unix.IP_PMTUDISC_DONT
	if s.v6 {
		level, opt, on, off = unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO, unix.IPV6_PMTUDISC_DONT
	}
	val := off
	if df {
		val = on
	}
	var serr error
	if err := s.raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, val) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set don't-fragment %v: %w", df, serr)
	}
	return nil
}
