package wguser

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// SocketDir is where wireguard-go serves, and wgctrl and wg(8) look for,
// the UAPI sockets of userspace devices (wireguard-go's ipc package has it
// unexported).
const SocketDir = "/var/run/wireguard"

// ErrInUse is returned by Create when another process serves the UAPI
// socket of that name: a second device of the name would take it over.
var ErrInUse = errors.New("UAPI socket is served by another process")

// SocketPath is the UAPI socket of device name.
func SocketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// Device is a running userspace WireGuard device.
type Device struct {
	log  *slog.Logger
	ns   *nsRef
	dev  *device.Device
	uapi net.Listener

	closing *atomic.Bool // set once the teardown starts; see wgLogger

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	served   chan error // the accept loop's end, and why
	closeErr error

	connsMu  sync.Mutex
	conns    map[net.Conn]struct{} // open UAPI connections, closed at teardown
	handlers sync.WaitGroup
}

// Create makes TUN device name with MTU mtu in namespace ns, starts a
// wireguard-go device on it and serves its UAPI socket SocketPath(name),
// through which wgctrl configures it as it would a kernel device. The
// device starts without keys, port or peers, and down; bringing the link up
// (netlink) brings it up. Create keeps its own duplicate of ns.
//
// A socket file of that name that nobody listens on (left by a crashed run)
// is replaced; one that is served refuses the name with ErrInUse.
func Create(log *slog.Logger, ns netns.NsHandle, name string, mtu int) (*Device, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if mtu < 68 || mtu > 65535 {
		return nil, fmt.Errorf("mtu: %d is outside 68..65535", mtu)
	}
	if !ns.IsOpen() {
		return nil, errors.New("ns: no namespace handle")
	}
	log = log.With("device", name)
	ref, err := dupNS(ns)
	if err != nil {
		return nil, err
	}
	d, err := create(log, ref, name, mtu)
	if err != nil {
		_ = ref.close()
		return nil, err
	}
	return d, nil
}

func create(log *slog.Logger, ref *nsRef, name string, mtu int) (*Device, error) {
	home, err := isProcessNS(ref.h)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	path := SocketPath(name)
	// Probe first so a live socket is refused before anything is made: a
	// TUN of that name may exist, owned by the process serving it.
	// (ipc.UAPIOpen probes as well, but says only "unix socket in use".)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("create %s: %s: %w", name, path, ErrInUse)
	}
	uapiFile, err := ipc.UAPIOpen(name) // replaces a stale socket file
	if err != nil {
		return nil, fmt.Errorf("create %s: open UAPI socket %s: %w", name, path, err)
	}
	// The listener dups the fd; ours is only needed until then.
	defer uapiFile.Close()
	undoSocket := func() { _ = os.Remove(path) }

	var tdev tun.Device
	if err := ref.do(func() error {
		var err error
		tdev, err = tun.CreateTUN(name, mtu)
		return err
	}); err != nil {
		undoSocket()
		return nil, fmt.Errorf("create %s: TUN: %w", name, err)
	}
	bind := conn.NewDefaultBind()
	if !home {
		tdev = &nsTUN{Device: tdev, ns: ref}
		bind = &nsBind{Bind: bind, ns: ref}
	}
	closing := new(atomic.Bool)
	dev := device.NewDevice(tdev, bind, wgLogger(log, closing))
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		closing.Store(true)
		dev.Close() // closes the TUN, which deletes the netdev
		undoSocket()
		return nil, fmt.Errorf("create %s: listen on UAPI socket %s: %w", name, path, err)
	}
	d := &Device{
		log:     log,
		ns:      ref,
		dev:     dev,
		uapi:    uapi,
		closing: closing,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		served:  make(chan error, 1),
		conns:   map[net.Conn]struct{}{},
	}
	go d.serve()
	go d.run()
	log.Info("userspace wireguard device started", "mtu", mtu, "socket", path, "process_namespace", home)
	return d, nil
}

// validName refuses names the kernel would refuse or rewrite, and any that
// would put the socket outside SocketDir: the name is also a file name.
func validName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("name: %q is not a device name", name)
	case len(name) > 15:
		return fmt.Errorf("name: %q is longer than 15 bytes", name)
	case strings.ContainsAny(name, "/:% \t\n\x00"):
		// '%' would make TUNSETIFF pick a name of its own ("wg%d").
		return fmt.Errorf("name: %q contains '/', ':', '%%' or a space", name)
	}
	return nil
}

// Close ends the device: the UAPI socket is removed and the TUN netdev
// deleted. It returns once all is done; later calls return the same result.
func (d *Device) Close() error {
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.done
	return d.closeErr
}

// Done is closed when the device has ended, by Close or on its own.
func (d *Device) Done() <-chan struct{} { return d.done }

// serve accepts UAPI connections until the listener fails: it was closed,
// or its socket file was removed.
func (d *Device) serve() {
	for {
		c, err := d.uapi.Accept()
		if err != nil {
			d.served <- err
			return
		}
		d.connsMu.Lock()
		d.conns[c] = struct{}{}
		d.handlers.Add(1)
		d.connsMu.Unlock()
		go func() {
			defer d.handlers.Done()
			d.dev.IpcHandle(c) // closes c
			d.connsMu.Lock()
			delete(d.conns, c)
			d.connsMu.Unlock()
		}()
	}
}

// run waits for the end of the device, whatever causes it, and tears
// everything down once.
func (d *Device) run() {
	served := d.served
	select {
	case <-d.stop:
		d.log.Info("closing userspace wireguard device")
	case <-d.dev.Wait():
		d.log.Warn("userspace wireguard device ended on its own (TUN device gone?)")
	case err := <-d.served:
		served = nil
		d.log.Warn("UAPI socket failed; ending the device", "err", err)
	}
	d.closing.Store(true)
	// No configuration may arrive while the device closes. Closing the
	// listener unlinks the socket (ipc.UAPIListen sets unlink-on-close).
	// Its error says nothing useful: the listener races its own inotify
	// goroutine over a pipe (and fails when the socket file is gone), but
	// it always gets to the unlink.
	if err := d.uapi.Close(); err != nil {
		d.log.Debug("close UAPI listener", "err", err)
	}
	// The accept loop ends on the listener's error; wait for it so no
	// connection is registered after the sweep below.
	if served != nil {
		<-served
	}
	d.connsMu.Lock()
	for c := range d.conns {
		_ = c.Close()
	}
	d.connsMu.Unlock()
	d.dev.Close() // closes the TUN fd: the kernel deletes the netdev
	d.handlers.Wait()
	d.closeErr = d.ns.close()
	close(d.done)
}
