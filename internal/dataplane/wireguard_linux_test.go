package dataplane_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/dataplane/dataplanetest"
	"github.com/weft-net/weft/internal/dataplane/wguser"
	"github.com/weft-net/weft/internal/nsrun"
)

// wgNames returns two WireGuard device names unique to one harness:
// userspace devices are found by their UAPI socket, in one directory for
// the whole machine, whatever namespace their TUN is in.
func wgNames() [2]string {
	s := strings.ToLower(rand.Text()[:8])
	return [2]string{"wt" + s + "a", "wt" + s + "b"}
}

// userspaceWG is the WireGuard option of the harness's Netlinks: this
// machine's kernel has no WireGuard, so its devices are wguser's, made in
// the test namespace.
func (h *nsHarness) userspaceWG(mode string) dataplane.NetlinkOption {
	log := slog.New(slog.NewTextHandler(h.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	return dataplane.WireGuard(mode, func(name string, mtu int) (dataplane.WGDevice, error) {
		d, err := wguser.Create(log, h.ns, name, mtu)
		if err != nil {
			return nil, err
		}
		return d, nil
	})
}

func (h *nsHarness) WGNames() (string, string) { return h.wg[0], h.wg[1] }

// wgctl runs f with a wgctrl client opened in the test namespace (where
// its generic netlink socket finds kernel devices).
func (h *nsHarness) wgctl(what string, f func(c *wgctrl.Client) error) {
	h.t.Helper()
	var c *wgctrl.Client
	h.check("open wgctrl", nsrun.Do(h.ns, func() error {
		var err error
		c, err = wgctrl.New()
		return err
	}))
	defer c.Close()
	h.check(what, f(c))
}

func (h *nsHarness) DeleteWGPeer(k dataplane.WGPeerKey) {
	h.wgctl("remove peer", func(c *wgctrl.Client) error {
		return c.ConfigureDevice(k.Dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k.PublicKey, Remove: true}}})
	})
}

func (h *nsHarness) AddWGPeer(p dataplane.WGPeer) {
	var allowed []net.IPNet
	for _, a := range p.Allowed() {
		allowed = append(allowed, *ipNet(a))
	}
	psk := p.PSK
	keepalive := time.Duration(p.Keepalive) * time.Second
	h.wgctl("set peer", func(c *wgctrl.Client) error {
		return c.ConfigureDevice(p.Dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
			PublicKey: p.PublicKey, Endpoint: net.UDPAddrFromAddrPort(p.Endpoint), PresharedKey: &psk,
			PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true, AllowedIPs: allowed,
		}}})
	})
}

func (h *nsHarness) WireGuard(name string) (dataplane.WGStatus, bool) {
	st, ok, err := h.dp.WireGuard(name)
	h.check("wireguard status", err)
	return st, ok
}

// kernelWireGuard reports whether the kernel makes WireGuard devices
// (it has the module), trying in h's namespace.
func kernelWireGuard(t *testing.T, h *nsHarness) bool {
	t.Helper()
	if exec.Command("ip", "-n", h.name, "link", "add", "wtprobe0", "type", "wireguard").Run() != nil {
		return false
	}
	run(t, "ip", "-n", h.name, "link", "del", "wtprobe0")
	return true
}

// TestNetlinkConformanceKernelWireGuard is the suite's WireGuard part with
// kernel devices (TestNetlinkConformance runs it with userspace ones where
// the kernel has no WireGuard, as on the machines this was written on).
func TestNetlinkConformanceKernelWireGuard(t *testing.T) {
	if !kernelWireGuard(t, newNS(t)) {
		t.Skip("the kernel has no WireGuard (ip link add type wireguard fails); userspace devices are covered by TestNetlinkConformance")
	}
	dataplanetest.RunWireGuard(t, func(t *testing.T) dataplanetest.Harness {
		h := newNS(t)
		h.wgMode = dataplane.WGKernel
		h.dp = h.newDP()
		return h
	})
}

// TestNetlinkConformanceUserspaceWireGuard is the suite's WireGuard part
// with userspace devices even where the kernel has WireGuard.
func TestNetlinkConformanceUserspaceWireGuard(t *testing.T) {
	dataplanetest.RunWireGuard(t, func(t *testing.T) dataplanetest.Harness {
		h := newNS(t)
		h.wgMode = dataplane.WGUserspace
		h.dp = h.newDP()
		return h
	})
}

// TestNetlinkWireGuardModes: which implementation each mode picks, and
// what a mode that cannot be served says.
func TestNetlinkWireGuardModes(t *testing.T) {
	if _, err := dataplane.NewNetlink(nil, netns.None(), dataplane.WireGuard("fast", nil)); err == nil ||
		!strings.Contains(err.Error(), "wireguard mode") {
		t.Errorf("unknown mode: err = %v, want one naming the wireguard mode", err)
	}
	for _, c := range []struct {
		mode    string
		creator bool
	}{
		{dataplane.WGAuto, true},
		{dataplane.WGKernel, true},
		{dataplane.WGUserspace, true},
		{dataplane.WGUserspace, false},
		{dataplane.WGAuto, false},
	} {
		t.Run(fmt.Sprintf("%s/creator=%t", c.mode, c.creator), func(t *testing.T) {
			h := newNS(t)
			kernel := kernelWireGuard(t, h)
			opt := h.userspaceWG(c.mode)
			if !c.creator {
				opt = dataplane.WireGuard(c.mode, nil)
			}
			dp, err := dataplane.NewNetlink(nil, h.ns, opt)
			h.check("netlink", err)
			t.Cleanup(dp.Close)
			tp := dataplanetest.NewWGTopology(h)
			_, err = dp.Reconcile(context.Background(), tp.State(), false)
			want := dataplane.WGUserspace
			switch {
			case c.mode == dataplane.WGKernel || (c.mode == dataplane.WGAuto && kernel):
				want = dataplane.WGKernel
			}
			switch {
			case want == dataplane.WGKernel && !kernel:
				if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "the kernel has no WireGuard") {
					t.Errorf("kernel mode without kernel WireGuard: err = %v", err)
				}
			case want == dataplane.WGUserspace && !c.creator:
				if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "no userspace WireGuard") {
					t.Errorf("userspace without a creator: err = %v", err)
				}
			default:
				if err != nil {
					t.Fatalf("Reconcile: %v", err)
				}
				st, ok, err := dp.WireGuard(tp.A)
				if err != nil || !ok || st.Impl != want {
					t.Errorf("WireGuard(%s) = %q, %t, %v; want %s", tp.A, st.Impl, ok, err, want)
				}
				return
			}
			if h.LinkIndex(tp.A) != 0 {
				t.Errorf("%s exists after a failed creation", tp.A)
			}
		})
	}
}

// TestNetlinkWireGuardUserspaceEnds: a userspace device that ends on its
// own (its socket file removed, as `wg-quick down` does) is made again by
// the next pass, with and without a subscription; Close ends the devices.
func TestNetlinkWireGuardUserspaceEnds(t *testing.T) {
	h := newNS(t)
	h.wgMode = dataplane.WGUserspace
	h.dp = h.newDP()
	tp := dataplanetest.NewWGTopology(h)
	want := tp.State()
	dataplanetest.WantChanges(t, "create", dataplanetest.Reconcile(t, h.dp, want, true), tp.Created())
	recreated := dataplane.Changes{LinksAdded: 1, WGPeersAdded: 2, RoutesAdded: 2}

	// Without a subscription: the pass that finds the device's Done
	// closed makes it again. Until then, passes write nothing.
	end := func() int {
		idx := h.LinkIndex(tp.A)
		h.check("remove socket", os.Remove(wguser.SocketPath(tp.A)))
		waitFor(t, "TUN gone", func() bool { return h.LinkIndex(tp.A) != idx })
		return idx
	}
	idx := end()
	var sum dataplane.Changes
	waitFor(t, "device made again", func() bool {
		sum = sum.Add(dataplanetest.Reconcile(t, h.dp, want, false))
		return h.LinkIndex(tp.A) != 0
	})
	dataplanetest.WantChanges(t, "recreate", sum, recreated)
	dataplanetest.WantWG(t, h, tp, want)
	if h.LinkIndex(tp.A) == idx {
		t.Errorf("%s kept ifindex %d", tp.A, idx)
	}

	// With one: the deletion of the TUN drops the device from the index
	// and kicks, and the next pass makes it again.
	ctx, cancel := context.WithCancel(context.Background())
	kicks := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() { done <- h.dp.Subscribe(ctx, func() { kicks <- struct{}{} }) }()
	t.Cleanup(func() { cancel(); <-done })
	<-kicks
	end()
	select {
	case <-kicks:
	case <-time.After(5 * time.Second):
		t.Fatal("no kick after the device ended")
	}
	dataplanetest.WantChanges(t, "recreate after kick", dataplanetest.Reconcile(t, h.dp, want, false), recreated)
	dataplanetest.WantWG(t, h, tp, want)

	// Close ends the devices it made.
	dp, err := dataplane.NewNetlink(nil, h.ns, h.userspaceWG(dataplane.WGUserspace))
	h.check("netlink", err)
	other := dataplanetest.NewWGTopology(h)
	other.A, other.B = "wtc"+other.A[2:], "wtc"+other.B[2:]
	other.PortA, other.PortB = 52820, 52821
	dataplanetest.Reconcile(t, dp, other.State(), false)
	dp.Close()
	for _, name := range []string{other.A, other.B} {
		if h.LinkIndex(name) != 0 {
			t.Errorf("%s survived Close", name)
		}
		if _, err := os.Stat(wguser.SocketPath(name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket of %s after Close: %v", name, err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// TestNetlinkWireGuardMatchesTools checks what the suite trusts — Dump's
// WireGuard devices and peers, and the device routes on them — against
// wg(8) and iproute2: routes are plain device routes (scope link, no
// nexthop object, whatever Netlink does for VXLAN routes).
func TestNetlinkWireGuardMatchesTools(t *testing.T) {
	h := newNS(t)
	tp := dataplanetest.NewWGTopology(h)
	tp.Peers[1] = dataplanetest.WGPeerSpec{Port: 51820, Subnet: 1, PSK: true, Keepalive: 25}
	want := tp.State()
	dataplanetest.Reconcile(t, h.dp, want, true)

	// wg show DEV dump: the device, then per peer: public key, preshared
	// key, endpoint, allowed ips, handshake, rx, tx, keepalive.
	var got, wantWG []string
	for _, dev := range []string{tp.A, tp.B} {
		out, err := exec.Command("ip", "netns", "exec", h.name, "wg", "show", dev, "dump").CombinedOutput()
		h.check("wg show: "+string(out), err)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		f := strings.Fields(lines[0])
		got = append(got, fmt.Sprintf("%s port %s key %s", dev, f[2], f[1]))
		l := want.Links[dev]
		wantWG = append(wantWG, fmt.Sprintf("%s port %d key %s", dev, l.Port, l.PrivateKey.PublicKey()))
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			got = append(got, fmt.Sprintf("%s peer %s psk %t endpoint %s allowed %s keepalive %s", dev, f[0], f[1] != "(none)", f[2], f[3], f[7]))
		}
	}
	for _, p := range want.WGPeers {
		ka := "off"
		if p.Keepalive != 0 {
			ka = fmt.Sprint(p.Keepalive)
		}
		wantWG = append(wantWG, fmt.Sprintf("%s peer %s psk %t endpoint %s allowed %s keepalive %s",
			p.Dev, p.PublicKey, p.PSK != (dataplane.WGKey{}), p.Endpoint, p.Allowed()[0], ka))
	}
	slices.Sort(got)
	slices.Sort(wantWG)
	if d := cmp.Diff(wantWG, got); d != "" {
		t.Errorf("wg show (-want +got):\n%s", d)
	}

	for _, dev := range []string{tp.A, tp.B} {
		for _, fam := range []string{"-4", "-6"} {
			out, err := exec.Command("ip", "-n", h.name, fam, "route", "show", "dev", dev, "proto", "87").CombinedOutput()
			h.check("ip route: "+string(out), err)
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if line == "" {
					continue
				}
				// IPv6 routes have no scope (the kernel reports universe).
				if (fam == "-4" && !strings.Contains(line, "scope link")) || nhidRE.MatchString(" "+line) || strings.Contains(line, " via ") {
					t.Errorf("route on %s is not a plain device route: %s", dev, line)
				}
			}
		}
	}
}

// TestNetlinkWireGuardTooManyAllowedIPs: a peer of ours given more allowed
// IPs behind our back (than a WGPeer can declare) is not taken for the
// declared one; the full pass replaces its allowed IPs.
func TestNetlinkWireGuardTooManyAllowedIPs(t *testing.T) {
	h := newNS(t)
	tp := dataplanetest.NewWGTopology(h)
	want := tp.State()
	dataplanetest.WantChanges(t, "create", dataplanetest.Reconcile(t, h.dp, want, true), tp.Created())
	p := want.WGPeers[dataplane.WGPeerKey{Dev: tp.A, PublicKey: dataplanetest.WGPeerKey(1)}]
	var allowed []net.IPNet
	for _, a := range []string{"10.244.1.0/24", "10.99.0.0/16", "10.98.0.0/16"} {
		allowed = append(allowed, *ipNet(netip.MustParsePrefix(a)))
	}
	h.wgctl("add allowed ips", func(c *wgctrl.Client) error {
		return c.ConfigureDevice(tp.A, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: p.PublicKey, UpdateOnly: true, AllowedIPs: allowed}}})
	})
	dataplanetest.WantChanges(t, "full", dataplanetest.Reconcile(t, h.dp, want, true), dataplane.Changes{WGPeersAdded: 1})
	dataplanetest.WantWG(t, h, tp, want)
	st, _ := h.WireGuard(tp.A)
	for _, ps := range st.Peers {
		if ps.PublicKey == p.PublicKey && len(ps.AllowedIPs) != 1 {
			t.Errorf("peer 1 allowed %v after the full pass, want %v", ps.AllowedIPs, p.Allowed())
		}
	}
}

// TestWireGuardModeNames: the modes NewNetlink takes are the values of
// the --wireguard-device flag.
func TestWireGuardModeNames(t *testing.T) {
	for got, want := range map[string]string{
		dataplane.WGAuto: config.WireGuardAuto, dataplane.WGKernel: config.WireGuardKernel, dataplane.WGUserspace: config.WireGuardUserspace,
	} {
		if got != want {
			t.Errorf("mode %q, flag value %q", got, want)
		}
	}
}
