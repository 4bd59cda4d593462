package dataplane_test

import (
	"crypto/rand"
	"log/slog"
	"net"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/dataplane"
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
