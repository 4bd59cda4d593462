package dataplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/nsrun"
)

// WireGuard devices (Link.Kind KindWireGuard) in Netlink.
//
// A kernel device is made with `ip link add type wireguard`. Where the
// kernel has no WireGuard (LinkAdd says EOPNOTSUPP), the device is a
// userspace one: a TUN served by wireguard-go inside this process, made by
// the creator given with the WireGuard option, which Netlink keeps until
// the device is no longer desired or Close. Either way the device is
// configured the same way afterwards: addresses, MTU, routes and up state
// through netlink, key, port and peers through wgctrl, which finds a
// userspace device by its UAPI socket (wgSocketDir) and a kernel one over
// generic netlink.
//
// Identity is the kind alone: an existing device of our name that is a
// kernel WireGuard device, or the TUN of a userspace device (one whose
// UAPI socket is served), is adopted and fixed in place (a restart must
// not drop its peers' sessions); anything else of that name is deleted
// and replaced. A userspace device is recognised whichever process serves
// it: `weft status` reads the daemon's devices from a process of its own,
// and replacing another process's device would race its teardown, which
// removes the socket path the new device serves. A userspace device
// cannot outlive the process serving it, so a daemon restart on such a
// host always makes a new one (and its peers handshake again).

// wgSocketDir is where userspace WireGuard implementations serve their
// UAPI sockets, <name>.sock: the convention of wireguard-go, wg(8) and
// wgctrl (and of package wguser).
const wgSocketDir = "/var/run/wireguard"

// wgDefaultMTU is WireGuard's own default, for a device declared with
// MTU 0 (1500 minus the 80 bytes of an IPv6 WireGuard header).
const wgDefaultMTU = 1420

// WireGuard sets how Netlink makes WireGuard devices: mode is WGAuto (the
// kernel's if it has the module, else a userspace device; the default),
// WGKernel or WGUserspace, and create makes a userspace device name with
// MTU mtu in Netlink's namespace (wguser.Create; nil: none available).
func WireGuard(mode string, create func(name string, mtu int) (WGDevice, error)) NetlinkOption {
	return func(o *netlinkOptions) { o.wgMode, o.wgCreate = mode, create }
}

// wgState is Netlink's WireGuard side: the devices it serves and its
// wgctrl client.
type wgState struct {
	mode   string
	create func(name string, mtu int) (WGDevice, error)
	// noKernel is set once the kernel refused a WireGuard device (no
	// module): mode auto then goes straight to userspace.
	noKernel atomic.Bool

	// clientMu serialises the use of client, which is opened on first use
	// (most Netlinks never see a WireGuard device).
	clientMu sync.Mutex
	client   *wgctrl.Client

	mu   sync.Mutex
	user map[string]WGDevice // userspace devices we made, by name

	// fresh are devices we created that have had no peers written yet:
	// the first peers written there are greeted (settled). Only
	// passes use it, under Netlink.pass.
	fresh map[string]bool
}

func newWGState(o netlinkOptions) (*wgState, error) {
	switch o.wgMode {
	case "":
		o.wgMode = WGAuto
	case WGAuto, WGKernel, WGUserspace:
	default:
		return nil, fmt.Errorf("wireguard mode: %q is not one of %s, %s, %s", o.wgMode, WGAuto, WGKernel, WGUserspace)
	}
	return &wgState{mode: o.wgMode, create: o.wgCreate, user: map[string]WGDevice{}, fresh: map[string]bool{}}, nil
}

// closeWG ends the userspace devices we serve and closes the wgctrl
// client.
func (n *Netlink) closeWG() {
	w := n.wg
	w.mu.Lock()
	devs := w.user
	w.user = map[string]WGDevice{}
	w.mu.Unlock()
	for name, d := range devs {
		if err := d.Close(); err != nil {
			n.log.Warn("close userspace wireguard device", "link", name, "err", err)
		}
	}
	w.clientMu.Lock()
	defer w.clientMu.Unlock()
	if w.client != nil {
		_ = w.client.Close()
		w.client = nil
	}
}

// wgDo runs f with the wgctrl client. The client's generic netlink socket
// (kernel devices) belongs to the namespace of the thread that opens it,
// so it is opened inside n's namespace. A client opened before the kernel
// had WireGuard knows no kernel devices (it checks once, at open): with
// kernel set (the device is a kernel one), a "not found" reopens it and
// tries again.
func (n *Netlink) wgDo(kernel bool, f func(c *wgctrl.Client) error) error {
	w := n.wg
	w.clientMu.Lock()
	defer w.clientMu.Unlock()
	for attempt := 0; ; attempt++ {
		if w.client == nil {
			open := func() error {
				var err error
				w.client, err = wgctrl.New()
				return err
			}
			var err error
			if n.ns.IsOpen() {
				err = nsrun.Do(n.ns, open)
			} else {
				err = open()
			}
			if err != nil {
				return fmt.Errorf("open wireguard control client: %w", err)
			}
		}
		err := f(w.client)
		if attempt > 0 || !kernel || !errors.Is(err, os.ErrNotExist) {
			return err
		}
		_ = w.client.Close()
		w.client = nil
	}
}

// wgDevice reads device name's WireGuard configuration.
func (n *Netlink) wgDevice(name string, kernel bool) (*wgtypes.Device, error) {
	var d *wgtypes.Device
	err := n.wgDo(kernel, func(c *wgctrl.Client) error {
		var err error
		d, err = c.Device(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", name, err)
	}
	return d, nil
}

// configureWG applies cfg to device name (never with ReplacePeers: peers
// not named in cfg are left alone).
func (n *Netlink) configureWG(name string, kernel bool, cfg wgtypes.Config) error {
	return n.wgDo(kernel, func(c *wgctrl.Client) error { return c.ConfigureDevice(name, cfg) })
}

// served returns our userspace device name if it is still running.
func (w *wgState) served(name string) WGDevice {
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok := w.user[name]
	if !ok || ended(d) {
		return nil
	}
	return d
}

func ended(d WGDevice) bool {
	select {
	case <-d.Done():
		return true
	default:
		return false
	}
}

// reapWG reports the userspace devices that ended on their own (their
// TUN was deleted), for the engine to forget, so the pass makes them
// again.
func (n *Netlink) reapWG() []instLink {
	w := n.wg
	w.mu.Lock()
	var gone []instLink
	for name, d := range w.user {
		if ended(d) {
			gone = append(gone, instLink{Link: Link{Kind: KindWireGuard, Name: name}, user: true})
			delete(w.user, name)
		}
	}
	w.mu.Unlock()
	for _, l := range gone {
		n.log.Warn("userspace wireguard device ended; making it again", "link", l.Name)
	}
	return gone
}

// servedWG reports whether a userspace WireGuard device name is served:
// ours, or one whose UAPI socket answers (a socket file nobody listens on
// is left by a process that died, with its device).
func (n *Netlink) servedWG(name string) bool {
	if n.wg.served(name) != nil {
		return true
	}
	c, err := net.DialTimeout("unix", filepath.Join(wgSocketDir, name+".sock"), time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// ourLink returns the index entry for a device of a kind we manage: a
// VXLAN device, a kernel WireGuard device, or the TUN of a served
// userspace WireGuard device. A WireGuard device's key and port are not
// read here (readWGLink).
func (n *Netlink) ourLink(l netlink.Link) (instLink, bool) {
	switch v := l.(type) {
	case *netlink.Vxlan:
		return fromVxlan(v), true
	case *netlink.Wireguard:
		return fromWG(l.Attrs(), false), true
	case *netlink.Iptun:
		return fromIPIP(v), true
	case *netlink.Tuntap:
		if u, ok := n.udpLink(l.Attrs()); ok {
			return u, true
		}
		if n.servedWG(l.Attrs().Name) {
			return fromWG(l.Attrs(), true), true
		}
	}
	return instLink{}, false
}

func fromWG(a *netlink.LinkAttrs, user bool) instLink {
	return instLink{
		Link:  Link{Kind: KindWireGuard, Name: a.Name, MTU: a.MTU},
		index: a.Index,
		up:    a.Flags&net.FlagUp != 0,
		user:  user,
	}
}

// readWGLink fills in a WireGuard device's listen port and private key.
func (n *Netlink) readWGLink(l *instLink) (*wgtypes.Device, error) {
	d, err := n.wgDevice(l.Name, !l.user)
	if err != nil {
		return nil, err
	}
	l.Port, l.PrivateKey = uint16(d.ListenPort), d.PrivateKey
	return d, nil
}

// fits implements kernel: whether an existing WireGuard device is of the
// implementation the mode asks for (any other device passes).
func (n *Netlink) fits(l instLink) bool {
	switch {
	case l.Kind != KindWireGuard:
		return true
	case n.wg.mode == WGKernel:
		return !l.user
	case n.wg.mode == WGUserspace:
		return l.user
	}
	return true
}

// addLink creates want's device.
func (n *Netlink) addLink(want Link) error {
	switch want.Kind {
	case KindWireGuard:
		err := n.addWGLink(want)
		if err == nil {
			n.wg.fresh[want.Name] = true
		}
		return err
	case KindIPIP:
		return n.addIPIPLink(want)
	}
	if want.Kind == KindUDP {
		return n.addUDPLink(want)
	}
	if err := n.h.LinkAdd(newVxlan(want)); err != nil {
		return err
	}
	n.log.Info("created link", "link", want.Name, "vni", want.VNI, "local", want.Local)
	return nil
}

func (n *Netlink) addWGLink(want Link) error {
	w, name := n.wg, want.Name
	var kernelErr error
	if w.mode == WGKernel || (w.mode == WGAuto && !w.noKernel.Load()) {
		err := n.h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: want.MTU}})
		switch {
		case err == nil:
			n.log.Info("created link", "link", name, "kind", "wireguard", "impl", WGKernel)
			return nil
		case !errors.Is(err, unix.EOPNOTSUPP):
			return err
		case w.mode == WGKernel:
			return fmt.Errorf("the kernel has no WireGuard (wireguard device mode %s): %w", WGKernel, err)
		}
		w.noKernel.Store(true)
		kernelErr = err
		n.log.Info("the kernel has no WireGuard; using userspace devices", "link", name)
	}
	if w.create == nil {
		return fmt.Errorf("no userspace WireGuard implementation to fall back on: %w", errors.Join(kernelErr, errors.ErrUnsupported))
	}
	// A device of ours that ended on its own may still be tearing down;
	// its teardown removes the UAPI socket path the new one is about to
	// serve. Close waits for the end.
	w.mu.Lock()
	old := w.user[name]
	delete(w.user, name)
	w.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	mtu := want.MTU
	if mtu == 0 {
		mtu = wgDefaultMTU
	}
	d, err := w.create(name, mtu)
	if err != nil {
		return fmt.Errorf("userspace device: %w", err)
	}
	w.mu.Lock()
	w.user[name] = d
	w.mu.Unlock()
	n.log.Info("created link", "link", name, "kind", "wireguard", "impl", WGUserspace)
	return nil
}

// removeLink deletes device l: a userspace WireGuard device of ours is
// closed (which deletes its TUN), anything else deleted through netlink
// (a userspace device's TUN too: wireguard-go then ends by itself).
func (n *Netlink) removeLink(name string, l instLink) error {
	if l.Kind == KindUDP {
		if ok, err := n.removeUDPLink(name); ok {
			return err
		}
	}
	if l.Kind == KindWireGuard && l.user {
		n.wg.mu.Lock()
		d := n.wg.user[name]
		delete(n.wg.user, name)
		n.wg.mu.Unlock()
		if d != nil {
			if err := d.Close(); err != nil {
				return fmt.Errorf("close userspace device: %w", err)
			}
			return nil
		}
	}
	return n.h.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.index, Name: name}})
}

// setWG sets a WireGuard device's listen port and private key (zero in
// w: leave as is) in one write that names no peers, so the peers and
// their sessions stay.
func (n *Netlink) setWG(l instLink, w linkWrite) error {
	var cfg wgtypes.Config
	if w.port != 0 {
		port := int(w.port)
		cfg.ListenPort = &port
	}
	if w.key != (WGKey{}) {
		key := w.key
		cfg.PrivateKey = &key
	}
	return n.configureWG(l.Name, !l.user, cfg)
}
