// Package wireguard plans the WireGuard backend: the overlay is carried by
// WireGuard devices, so traffic between hosts is encrypted, and it reads
// and writes upstream flannel's lease data so that weft and flannel hosts
// form one network.
//
// Design notes. Devices: in the default mode, "separate", one device per
// enabled family: flannel-wg, listening on ListenPort (51820) and reaching
// peers at their IPv4 public address, and flannel-wg-v6, listening on
// ListenPortV6 (51821) and reaching them at their IPv6 one. The modes
// "auto", "ipv4" and "ipv6" use flannel-wg alone, on ListenPort, for both
// families; they differ in which of a peer's public addresses the tunnel
// goes to: "ipv4" and "ipv6" say, "auto" chooses per peer (see endpoint).
// A device carries our lease's network address as a /32 (/128), the
// source address for traffic the host itself sends into the overlay; a
// single device carrying both families has both (Link.Addr, Link.Addr2).
//
// Routes: one device route per family for the whole cluster network,
// "10.244.0.0/16 dev flannel-wg": a WireGuard device is layer 3 and picks
// the peer by the destination among the peers' AllowedIPs (the
// cryptokey routing table), so no per-peer route, neighbour or FDB entry
// is needed. Our own subnet is reached over the CNI bridge, whose
// connected route is more specific. The routes depend on no peer, so they
// are part of the base plan, as the devices are.
//
// Peers: per peer lease and device, one WireGuard peer: its public key
// from the lease's BackendData (BackendV6Data for the IPv6 device), its
// endpoint the lease's public address and the port it published, its
// AllowedIPs its subnet (both subnets on a single device). A dual-stack
// peer in separate mode appears on both devices. An old peer without a
// Port is reached on our own listen port for that family, as upstream
// does. A peer naming our own public key is skipped: it is ourselves
// under another subnet, and a device cannot have itself as a peer.
//
// MTU: Backend.MTU is, as upstream, the MTU of the underlay the overlay
// is carved from (unset or 0: the underlay interface's); devices and
// FLANNEL_MTU get it less Overhead (80 bytes) for both families.
//
// Key: one private key for both devices, kept in the key file
// (WIREGUARD_KEY_FILE, default /run/flannel/wgkey, upstream's format:
// base64) and made on first start. Peers know us by its public key, so
// a restart keeps it; a reboot that clears /run makes a new one, which
// peers learn from our updated lease, as with upstream. The lease is
// never the key's source: it holds only the public key.
//
// Differences from upstream:
//   - Upstream deletes and recreates its devices at start and deletes
//     them at exit, dropping every session and the traffic with it; we
//     reuse a device we find and leave it at exit, so traffic keeps
//     flowing while the daemon restarts (the dataplane fixes its
//     settings in place).
//   - In the single-device modes upstream publishes ListenPortV6 in
//     BackendV6Data although its one device listens on ListenPort, so a
//     peer sending to our IPv6 address would reach a port nobody listens
//     on; we publish ListenPort, where we listen.
//   - Mode auto never chooses a family the peer has no public address of
//     (upstream would send to 0.0.0.0); Mode ipv4 (ipv6) on a network
//     without IPv4 (IPv6), where no peer publishes such an address, and
//     two separate devices on one port are config errors rather than a
//     network where no peer works.
//   - A peer lease we cannot use (bad key, missing data) is skipped and
//     counted instead of being half-installed.
package wireguard

import (
	"log/slog"
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// Device names, as upstream's.
const (
	Device   = "flannel-wg"
	DeviceV6 = "flannel-wg-v6"
)

// Backend is the wireguard planner for one host.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
	opts     Options
	key      dataplane.WGKey // private
	pub      dataplane.WGKey
}

// New returns a wireguard planner with the given options and private key.
func New(n *config.Network, u backend.Underlay, opts Options, key dataplane.WGKey) *Backend {
	return &Backend{net: n, underlay: u, opts: opts, key: key, pub: key.PublicKey()}
}

// Factory implements backend.Factory: it parses the options from the
// network config's Backend object and loads (or makes) the private key.
func Factory(env backend.Env) (backend.Backend, error) {
	n := env.Network
	opts, err := ParseOptions(n.Backend.Raw, n.EnableIPv4, n.EnableIPv6)
	if err != nil {
		return nil, err
	}
	if opts.MTU == 0 {
		if err := checkUnderlayMTU(env.Underlay.Name, env.Underlay.MTU, n.EnableIPv4, n.EnableIPv6); err != nil {
			return nil, err
		}
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path := env.Options.WireGuardKeyFile
	if path == "" {
		path = config.DefaultWireGuardKeyFile
	}
	key, err := LoadOrCreateKey(log, path)
	if err != nil {
		return nil, err
	}
	return New(n, env.Underlay, opts, key), nil
}

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendWireGuard }

// PublicKey is our public key, as the lease publishes it.
func (b *Backend) PublicKey() dataplane.WGKey { return b.pub }

func (b *Backend) v4() bool       { return b.net.EnableIPv4 }
func (b *Backend) v6() bool       { return b.net.EnableIPv6 }
func (b *Backend) separate() bool { return b.opts.Mode == ModeSeparate }

// MTU implements backend.Backend: the underlay MTU less Overhead, the
// MTU of every device.
func (b *Backend) MTU() int {
	if b.opts.MTU > 0 {
		return b.opts.MTU - Overhead
	}
	return b.underlay.MTU - Overhead
}

// port is the port we listen on for peers reaching us at our public
// address of a family: the v6 device's in separate mode, else the one
// device's.
func (b *Backend) port(v6 bool) uint16 {
	if v6 && b.separate() {
		return b.opts.ListenPortV6
	}
	return b.opts.ListenPort
}

// dev is the device carrying a family.
func (b *Backend) dev(v6 bool) string {
	if v6 && b.separate() {
		return DeviceV6
	}
	return Device
}

// Attrs implements backend.Backend: our public key and listen port per
// enabled family, in upstream's form.
func (b *Backend) Attrs() lease.Attrs {
	a := lease.Attrs{BackendType: config.BackendWireGuard}
	if b.v4() {
		a.PublicIP = b.underlay.PublicIP
		a.BackendData = EncodeData(b.pub, b.port(false))
	}
	if b.v6() {
		a.PublicIPv6 = b.underlay.PublicIPv6
		// Upstream writes ListenPortV6 here in the single-device modes too,
		// where nothing listens on it; see the package notes.
		a.BackendV6Data = EncodeData(b.pub, b.port(true))
	}
	return a
}

// Resume implements backend.Backend. Nothing of the old lease is kept:
// the key lives in the key file, which Factory read; if a reboot lost it,
// the new key is published and peers follow, as with upstream.
func (b *Backend) Resume(lease.Lease) lease.Attrs { return b.Attrs() }

// ProbeAddr implements backend.Backend: the peer's address on its
// WireGuard device, inside its AllowedIPs, so a reply proves a session.
func (b *Backend) ProbeAddr(p lease.Lease) netip.Addr { return backend.OverlayAddr(b.net, p) }

// PlanBase implements backend.Backend: our device(s) and the routes for
// the cluster network(s) over them.
func (b *Backend) PlanBase(self lease.Lease) *dataplane.State {
	s := dataplane.NewStateSized(2, 2)
	if b.v4() {
		b.addAddr(s, false, self.Subnet)
		s.AddRoute(dataplane.Route{Dst: b.net.Network, Dev: b.dev(false)})
	}
	if b.v6() {
		b.addAddr(s, true, self.IPv6Subnet)
		s.AddRoute(dataplane.Route{Dst: b.net.IPv6Network, Dev: b.dev(true)})
	}
	return s
}

// addAddr declares the device of a family, if not yet declared, and gives
// it the subnet's network address as a host prefix.
func (b *Backend) addAddr(s *dataplane.State, v6 bool, subnet netip.Prefix) {
	name := b.dev(v6)
	l, ok := s.Links[name]
	if !ok {
		l = dataplane.Link{
			Kind:       dataplane.KindWireGuard,
			Name:       name,
			Port:       b.port(v6),
			MTU:        b.MTU(),
			PrivateKey: b.key,
		}
	}
	if subnet.IsValid() {
		host := netip.PrefixFrom(subnet.Addr(), subnet.Addr().BitLen())
		if l.Addr.IsValid() {
			l.Addr2 = host
		} else {
			l.Addr = host
		}
	}
	s.Links[name] = l
}
