package wguser

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/nsrun"
)

// errNSClosed is returned by calls that reach a namespace after the device
// released it (wireguard-go may still read the MTU while it winds down).
var errNSClosed = errors.New("device namespace released")

// nsRef is the device's own duplicate of the caller's namespace handle, so
// the caller may close theirs after Create, and the handle is never used
// after it is closed: a closed fd number may be reused by another file,
// even another namespace.
type nsRef struct {
	mu     sync.RWMutex
	h      netns.NsHandle
	closed bool
}

func dupNS(ns netns.NsHandle) (*nsRef, error) {
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ns: duplicate handle %d: %w", int(ns), err)
	}
	return &nsRef{h: netns.NsHandle(fd)}, nil
}

// do runs f on a thread inside the namespace.
func (r *nsRef) do(f func() error) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return errNSClosed
	}
	return nsrun.Do(r.h, f)
}

func (r *nsRef) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return r.h.Close()
}

// isProcessNS reports whether ns is the namespace of the process's main
// thread, which is where every goroutine not locked to a switched thread
// runs (the runtime starts new threads from a clean template thread).
func isProcessNS(ns netns.NsHandle) (bool, error) {
	p, err := netns.GetFromPid(os.Getpid())
	if err != nil {
		return false, fmt.Errorf("read the process's namespace: %w", err)
	}
	defer p.Close()
	return ns.Equal(p), nil
}

// nsBind opens wireguard-go's UDP sockets inside the device's namespace,
// whatever goroutine brings the device up or changes its listen port.
// Everything else is the wrapped bind's: a socket keeps its namespace.
type nsBind struct {
	conn.Bind
	ns *nsRef
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = b.ns.do(func() error {
		var err error
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// nsTUN reads the TUN's MTU inside the device's namespace: wireguard-go's
// NativeTun asks an AF_INET socket of the calling thread for it by name,
// which outside the namespace finds no such device (or another one).
type nsTUN struct {
	tun.Device
	ns *nsRef
}

func (t *nsTUN) MTU() (mtu int, err error) {
	err = t.ns.do(func() error {
		var err error
		mtu, err = t.Device.MTU()
		return err
	})
	return mtu, err
}
