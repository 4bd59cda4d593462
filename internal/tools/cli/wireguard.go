package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weft-net/weft/internal/dataplane"
)

// wgDevice is one of our WireGuard devices as `weft status` shows it.
type wgDevice struct {
	Name string `json:"name"`
	// Impl is "kernel" or "userspace" (wireguard-go inside flanneld).
	Impl       string   `json:"implementation"`
	ListenPort uint16   `json:"listenPort"`
	PublicKey  string   `json:"publicKey"`
	Peers      []wgPeer `json:"peers"`
}

type wgPeer struct {
	PublicKey  string   `json:"publicKey"`
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowedIPs"`
	// LatestHandshake is zero when none completed.
	LatestHandshake time.Time `json:"latestHandshake,omitzero"`
	RxBytes         int64     `json:"rxBytes"`
	TxBytes         int64     `json:"txBytes"`
}

// readWireGuard reads those of devices that are WireGuard devices.
func readWireGuard(dp *dataplane.Netlink, devices []string) ([]wgDevice, error) {
	var out []wgDevice
	for _, name := range devices {
		st, ok, err := dp.WireGuard(name)
		if err != nil {
			return out, fmt.Errorf("wireguard device %s: %w", name, err)
		}
		if !ok {
			continue
		}
		d := wgDevice{Name: name, Impl: st.Impl, ListenPort: st.ListenPort, Peers: []wgPeer{}}
		if st.PublicKey != (dataplane.WGKey{}) {
			d.PublicKey = st.PublicKey.String()
		}
		for _, p := range st.Peers {
			wp := wgPeer{PublicKey: p.PublicKey.String(), LatestHandshake: p.LatestHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes}
			if p.Endpoint.IsValid() {
				wp.Endpoint = p.Endpoint.String()
			}
			for _, a := range p.AllowedIPs {
				wp.AllowedIPs = append(wp.AllowedIPs, a.String())
			}
			d.Peers = append(d.Peers, wp)
		}
		out = append(out, d)
	}
	return out, nil
}

func printWireGuard(w io.Writer, devs []wgDevice) {
	for _, d := range devs {
		impl := d.Impl
		if impl == dataplane.WGUserspace {
			impl = "userspace (wireguard-go in flanneld)"
		}
		shook := 0
		for _, p := range d.Peers {
			if !p.LatestHandshake.IsZero() {
				shook++
			}
		}
		fmt.Fprintf(w, "wireguard %s: %s, port %d, public key %s, %d peers (%d with a handshake)\n",
			d.Name, impl, d.ListenPort, dash(d.PublicKey), len(d.Peers), shook)
		if len(d.Peers) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "          PEER\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX")
		for _, p := range d.Peers {
			hs := "never"
			if !p.LatestHandshake.IsZero() {
				hs = time.Since(p.LatestHandshake).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "          %s\t%s\t%s\t%s\t%s\t%s\n", p.PublicKey, dash(p.Endpoint), strings.Join(p.AllowedIPs, ","), hs, bytesIEC(p.RxBytes), bytesIEC(p.TxBytes))
		}
		tw.Flush()
	}
}

// bytesIEC renders n bytes as wg(8) does: B, KiB, MiB, GiB.
func bytesIEC(n int64) string {
	f, unit := float64(n), "B"
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 {
			break
		}
		f, unit = f/1024, u
	}
	if unit == "B" {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.2f %s", f, unit)
}
