package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/tools/lab"
)

// The wireguard backend on the userspace device (wireguard-go inside
// flanneld), which is what this machine and CI have: their kernels lack
// the WireGuard module. --wireguard-device=userspace makes the choice
// explicit, so the tests mean the same on a kernel that has it.

const wgUserspace = "--wireguard-device=userspace"

// wgMarker is the payload pods send in the encryption checks: it must
// never be seen on the underlay.
var wgMarker = []byte("weft-plaintext!!")

// TestWireGuard runs 3 hosts with the wireguard backend, IPv4, IPv6-only
// and dual-stack (the last with a preshared key and keepalives): pods
// attached through our CNI plugin reach each other, WireGuard's own tool
// sees our devices and peers, and the underlay carries only UDP to the
// listen ports, never the pods' plaintext.
func TestWireGuard(t *testing.T) {
	psk := "3cCOZdU0D6ZmuaXKcs2cLTjEO1T4l9rvuM3ECuXRlDo=" // wg genpsk
	for i, tc := range []struct {
		name, netconf, u6 string
		devs              []string
		ports             []uint16
	}{
		{"ipv4", `{"Network":"10.60.0.0/16","Backend":{"Type":"wireguard"}}`, "",
			[]string{"flannel-wg"}, []uint16{51820}},
		{"ipv6-only", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:61::/56","Backend":{"Type":"wireguard"}}`, "fd18:61::/64",
			[]string{"flannel-wg-v6"}, []uint16{51821}},
		{"dual-stack", `{"Network":"10.62.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:62::/56",
			"Backend":{"Type":"wireguard","PSK":"` + psk + `","PersistentKeepaliveInterval":25}}`, "fd18:62::/64",
			[]string{"flannel-wg", "flannel-wg-v6"}, []uint16{51820, 51821}},
		// One device for both families, peers reached over IPv6 (their
		// v6 addresses are not private: fd18::/16 is, 2001:db8:: is not).
		{"dual-stack-one-device", `{"Network":"10.65.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:65::/56",
			"Backend":{"Type":"wireguard","Mode":"ipv6"}}`, "2001:db8:65::/64",
			[]string{"flannel-wg"}, []uint16{51820}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 60 + i
			if i == 3 {
				n = 65 // 63 and 64 are the restart and Kubernetes tests'
			}
			c := newClusterV6(t, fmt.Sprintf("wtwg%d", i), 3, fmt.Sprintf("198.18.%d.0/24", n), tc.u6, tc.netconf)
			// --healthz-status: checkWGStatus also reads the status over
			// TCP, as weft status --url does from elsewhere.
			c.startAll("--resync-period=2s", wgUserspace, "--healthz-ip=127.0.0.1", "--healthz-port=9102", "--healthz-status")
			var pods []*lab.Pod
			for _, h := range c.Hosts {
				pods = append(pods, c.addPod(h, "p1"))
			}
			want := 3 * 2
			if tc.u6 != "" && strings.Contains(tc.netconf, `"Network"`) {
				want *= 2 // both families
			}
			if got := c.podMatrix(pods, 20*time.Second); got != want {
				t.Fatalf("%d of %d pod pairs answered", got, want)
			}
			h1 := c.Hosts[0]
			for j, dev := range tc.devs {
				c.checkWGDevice(h1, dev, tc.ports[j], 2, tc.name == "dual-stack", true)
			}
			if strings.Contains(tc.netconf, `"Mode":"ipv6"`) {
				// wg show <dev> endpoints: "<key>\t[<addr>]:<port>" per peer.
				for _, l := range strings.Split(strings.TrimSpace(c.sh(h1, "wg", "show", "flannel-wg", "endpoints")), "\n") {
					if !strings.Contains(l, "[2001:db8:65::") {
						t.Errorf("Mode ipv6: peer endpoint %q is not the peer's IPv6 address", l)
					}
				}
			}
			if mtu := c.linkMTU(h1, tc.devs[0]); mtu != 1420 {
				t.Errorf("%s mtu %d, want 1420 (underlay 1500 less 80)", tc.devs[0], mtu)
			}
			for _, dst := range []netip.Addr{pods[1].IPv4, pods[1].IPv6} {
				if dst.IsValid() {
					c.checkEncrypted(pods[0], dst, c.Hosts[0], tc.ports)
				}
			}
			c.checkWGStatus(h1, tc.devs)
			c.checkWGLeases()
		})
	}
}

// checkWGLeases checks that weft leases names each host by the public key
// its device reports.
func (c *cluster) checkWGLeases() {
	c.t.Helper()
	out, err := execOut(weftBin, "leases", "--etcd-endpoints", c.EtcdClientURL, "--json")
	if err != nil {
		c.t.Fatalf("weft leases: %v\n%s", err, out)
	}
	var rows []struct{ Subnet, IPv6Subnet, Backend, Identity string }
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		c.t.Fatalf("weft leases --json: %v\n%s", err, out)
	}
	keys := map[string]bool{}
	for _, h := range c.Hosts {
		dev := "flannel-wg"
		if !c.subnets[h.Index].IsValid() {
			dev = "flannel-wg-v6"
		}
		keys[strings.TrimSpace(c.sh(h, "wg", "show", dev, "public-key"))] = true
	}
	if len(rows) != len(c.Hosts) {
		c.t.Fatalf("weft leases: %d rows, want %d:\n%s", len(rows), len(c.Hosts), out)
	}
	for _, r := range rows {
		if r.Backend != "wireguard" || !keys[r.Identity] {
			c.t.Errorf("weft leases row %+v: want backend wireguard and one of the devices' keys", r)
		}
	}
}

// checkWGStatus checks what weft status and the metrics say of h's
// WireGuard devices: the userspace implementation, both peers with a
// handshake, the kernel in sync with the plan. weft status reads the
// local socket (no flags), then the healthz listener (--url; flanneld runs
// with --healthz-status).
func (c *cluster) checkWGStatus(h *lab.Host, devs []string) {
	c.t.Helper()
	const base = "http://127.0.0.1:9102"
	out, err := c.Exec(context.Background(), h, weftBin, "status", "--json")
	if err != nil {
		c.t.Fatalf("weft status: %v\n%s", err, out)
	}
	var st struct {
		Daemon struct {
			Backend string
			Peers   []struct{ Identity, IdentityV6 string }
		}
		Drift struct {
			Desired        int
			Missing, Extra []string
		}
		WireGuard []struct {
			Name, Implementation string
			Peers                []struct {
				PublicKey       string
				LatestHandshake time.Time
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("weft status --json: %v\n%s", err, out)
	}
	if st.Daemon.Backend != "wireguard" || len(st.Daemon.Peers) != 2 || st.Daemon.Peers[0].Identity+st.Daemon.Peers[0].IdentityV6 == "" {
		c.t.Errorf("weft status daemon = %+v", st.Daemon)
	}
	if st.Drift.Desired == 0 || len(st.Drift.Missing) != 0 || len(st.Drift.Extra) != 0 {
		c.t.Errorf("weft status drift = %+v, want in sync", st.Drift)
	}
	if len(st.WireGuard) != len(devs) {
		c.t.Fatalf("weft status shows %d wireguard devices, want %d:\n%s", len(st.WireGuard), len(devs), out)
	}
	for i, d := range st.WireGuard {
		if d.Name != devs[i] || d.Implementation != "userspace" || len(d.Peers) != 2 {
			c.t.Errorf("weft status wireguard[%d] = %s %s, %d peers; want %s userspace, 2 peers", i, d.Name, d.Implementation, len(d.Peers), devs[i])
		}
		for _, p := range d.Peers {
			if p.LatestHandshake.IsZero() || time.Since(p.LatestHandshake) > time.Minute {
				c.t.Errorf("%s peer %s: latest handshake %v", d.Name, p.PublicKey, p.LatestHandshake)
			}
		}
	}
	text, err := c.Exec(context.Background(), h, weftBin, "status", "--url", base)
	if err != nil || !strings.Contains(text, "wireguard "+devs[0]+": userspace") {
		c.t.Errorf("weft status: %v\n%s", err, text)
	}
	_, body := c.curl(h, base+"/metrics")
	if v := metricValue(body, "flannel_wireguard_peers"); v != float64(2*len(devs)) {
		c.t.Errorf("flannel_wireguard_peers = %v, want %d", v, 2*len(devs))
	}
	if v := metricValue(body, "flannel_wireguard_handshake_age_seconds_count"); v != float64(2*len(devs)) {
		c.t.Errorf("handshake ages observed = %v, want %d", v, 2*len(devs))
	}
	if v := metricValue(body, `flannel_peers{backend="wireguard"}`); v != 2 {
		c.t.Errorf(`flannel_peers{backend="wireguard"} = %v, want 2`, v)
	}
}

// checkWGDevice checks with `wg show` that dev on h listens on port and
// has peers peers, each with an endpoint, (withPSK) a preshared key and
// (handshakes) a completed handshake.
func (c *cluster) checkWGDevice(h *lab.Host, dev string, port uint16, peers int, withPSK, handshakes bool) {
	c.t.Helper()
	// wg show <dev> dump: the device line (private key, public key, port,
	// fwmark), then one line per peer (public key, preshared key,
	// endpoint, allowed ips, latest handshake, rx, tx, keepalive).
	lines := strings.Split(strings.TrimSpace(c.sh(h, "wg", "show", dev, "dump")), "\n")
	if len(lines) != 1+peers {
		c.t.Fatalf("%s: wg show %s dump: %d lines, want %d:\n%s", h.NS, dev, len(lines), 1+peers, strings.Join(lines, "\n"))
	}
	if f := strings.Fields(lines[0]); len(f) < 3 || f[2] != fmt.Sprint(port) {
		c.t.Errorf("%s: %s device line %q, want listen port %d", h.NS, dev, lines[0], port)
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 8 {
			c.t.Errorf("%s: %s peer line %q", h.NS, dev, l)
			continue
		}
		if f[2] == "(none)" {
			c.t.Errorf("%s: %s peer %s has no endpoint", h.NS, dev, f[0])
		}
		if hasPSK := f[1] != "(none)"; hasPSK != withPSK {
			c.t.Errorf("%s: %s peer %s preshared key %v, want %v", h.NS, dev, f[0], hasPSK, withPSK)
		}
		if handshakes && f[4] == "0" {
			c.t.Errorf("%s: %s peer %s: no handshake after traffic", h.NS, dev, f[0])
		}
	}
}

// checkEncrypted pings dst from pod with wgMarker as the payload while
// capturing on h's underlay, and checks that the capture holds WireGuard
// UDP on one of ports and nothing of the pods' traffic in the clear.
func (c *cluster) checkEncrypted(pod *lab.Pod, dst netip.Addr, h *lab.Host, ports []uint16) {
	c.t.Helper()
	capt := startCapture(c.t, h.NS, "eth0")
	out, err := c.podExec(pod, "ping", "-c", "5", "-i", "0.2", "-W", "2", "-p", hex.EncodeToString(wgMarker), dst.String())
	frames := capt.stop()
	if err != nil {
		c.t.Fatalf("%s: ping %s: %v\n%s", pod.NS, dst, err, out)
	}
	wg, clear := 0, 0
	for _, f := range frames {
		if bytes.Contains(f, wgMarker) {
			c.t.Errorf("plaintext payload on %s's underlay: % x", h.NS, f)
		}
		p, ok := parseFrame(f)
		if !ok {
			continue
		}
		if p.src == pod.IPv4 || p.src == pod.IPv6 || p.dst == dst {
			clear++
		}
		for _, port := range ports {
			if p.proto == syscall.IPPROTO_UDP && (p.dstPort == port || p.srcPort == port) {
				wg++
			}
		}
	}
	c.t.Logf("capture on %s/eth0 while %s pinged %s: %d frames, %d WireGuard UDP, %d with pod addresses", h.NS, pod.NS, dst, len(frames), wg, clear)
	if wg < 10 {
		c.t.Errorf("%d WireGuard UDP packets on the underlay for 5 pings each way, want ≥ 10", wg)
	}
	if clear != 0 {
		c.t.Errorf("%d packets with pod addresses in the clear on the underlay", clear)
	}
}

// podExec runs a command in pod's namespace.
func (c *cluster) podExec(pod *lab.Pod, name string, args ...string) (string, error) {
	out, err := execOut("ip", append([]string{"netns", "exec", pod.NS, name}, args...)...)
	return out, err
}

// TestWireGuardRestart restarts flanneld on one of two hosts while pods
// ping across at 100/s, and reports what the userspace device's restart
// costs: the device ends with the process that serves it, so packets are
// lost until the new one is configured and has greeted its peers. Then a
// peer removed by hand comes back within one resync.
func TestWireGuardRestart(t *testing.T) {
	c := newCluster(t, "wtwr", 2, "198.18.63.0/24", `{"Network":"10.63.0.0/16","Backend":{"Type":"wireguard"}}`)
	c.startAll("--resync-period=2s", wgUserspace)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	p1, p2 := c.addPod(h1, "p1"), c.addPod(h2, "p1")
	if got := c.podMatrix([]*lab.Pod{p1, p2}, 20*time.Second); got != 2 {
		t.Fatalf("%d of 2 pod pairs answered", got)
	}
	t.Run("restart", func(t *testing.T) {
		ping := startPing(t, "p1→p2", p1.NS, netip.Addr{}, p2.IPv4, 800)
		time.Sleep(2 * time.Second)
		start := time.Now()
		if err := c.Stop(h2, syscall.SIGTERM); err != nil {
			t.Errorf("%s: flanneld exit on SIGTERM: %v", h2.NS, err)
		}
		if err := c.Start(h2, "--resync-period=2s", wgUserspace); err != nil {
			t.Fatal(err)
		}
		if got := c.waitSubnet(h2); got != c.subnets[h2.Index] {
			t.Errorf("%s: subnet changed across restart: %s -> %s", h2.NS, c.subnets[h2.Index], got)
		}
		if err := podPing(p1, p2.IPv4.String(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		back := time.Since(start)
		sent, lost := ping.wait(t)
		t.Logf("restart of %s (userspace device) under 100 pps: %d sent, %d lost (%.0f ms of traffic); pods reached again %s after SIGTERM",
			h2.NS, sent, lost, float64(lost)*10, back.Round(time.Millisecond))
		// The new device greets its peers at once (a handshake), so they
		// drop their sessions with the old one instead of waiting 15 s
		// for WireGuard's timers: the gap is the restart itself.
		if lost > 200 {
			t.Errorf("restart lost %d of %d packets (%d ms), want at most 2 s", lost, sent, lost*10)
		}
	})
	t.Run("peer removed by hand comes back", func(t *testing.T) {
		pub := strings.TrimSpace(c.sh(h2, "wg", "show", "flannel-wg", "public-key"))
		c.sh(h1, "wg", "set", "flannel-wg", "peer", pub, "remove")
		took := waitFor(t, "the peer to come back", 10*time.Second, func() bool {
			return strings.Contains(c.sh(h1, "wg", "show", "flannel-wg", "peers"), pub)
		})
		t.Logf("peer removed with wg set: back after %s", took.Round(time.Millisecond))
		if err := podPing(p1, p2.IPv4.String(), 10*time.Second); err != nil {
			t.Error(err)
		}
	})
}

// TestKubeWireGuard runs the wireguard backend in Kubernetes mode: nodes
// publish upstream's annotations (backend-type wireguard, backend-data
// {"PublicKey":…,"Port":51820}, naming the key `wg show` reports), and a
// host whose net-conf.json has another preshared key joins the peer lists
// but can exchange no traffic with the others.
func TestKubeWireGuard(t *testing.T) {
	const u = "198.18.64.0/24"
	k := startKubeAPI(t, u)
	psk, wrong := "3cCOZdU0D6ZmuaXKcs2cLTjEO1T4l9rvuM3ECuXRlDo=", "ZtR+8gm0qkDxkJl6T6uBkP3CBs7mA5Rjxbn9Iyq5yXQ="
	c := newClusterV6(t, "wtkw", 3, u, "", "")
	ls := k.store(kubeNetConfBackend(64, false, `{"Type":"wireguard","PSK":"`+psk+`"}`), podCIDRs(64, false))(c)
	wrongConf := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(wrongConf, []byte(kubeNetConfBackend(64, false, `{"Type":"wireguard","PSK":"`+wrong+`"}`)), 0o644); err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	for _, h := range c.Hosts {
		flags := append([]string{"--resync-period=2s", wgUserspace}, ls.flags...)
		if h == h3 {
			flags = append(flags, "--net-config-path="+wrongConf)
		}
		if err := c.Start(h, flags...); err != nil {
			t.Fatal(err)
		}
		c.subnets[h.Index] = c.waitSubnet(h)
	}
	for _, h := range c.Hosts {
		node, err := k.srv.Admin.CoreV1().Nodes().Get(k.ctx, h.NS, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a := node.Annotations
		var data struct {
			PublicKey string
			Port      int
		}
		if err := json.Unmarshal([]byte(a[annPrefix+"backend-data"]), &data); err != nil {
			t.Fatalf("node %s: backend-data %q: %v", h.NS, a[annPrefix+"backend-data"], err)
		}
		pub := strings.TrimSpace(c.sh(h, "wg", "show", "flannel-wg", "public-key"))
		if a[annPrefix+"backend-type"] != "wireguard" || data.PublicKey != pub || data.Port != 51820 {
			t.Errorf("node %s: backend-type %q backend-data %q; want wireguard, key %s, port 51820",
				h.NS, a[annPrefix+"backend-type"], a[annPrefix+"backend-data"], pub)
		}
	}
	p1, p2, p3 := c.addPod(h1, "p1"), c.addPod(h2, "p1"), c.addPod(h3, "p1")
	if got := c.podMatrix([]*lab.Pod{p1, p2}, 20*time.Second); got != 2 {
		t.Errorf("%d of 2 pod pairs with the same PSK answered", got)
	}
	for _, pair := range [][2]*lab.Pod{{p1, p3}, {p3, p2}} {
		if err := podPing(pair[0], pair[1].IPv4.String(), 4*time.Second); err == nil {
			t.Errorf("%s reached %s across different preshared keys", pair[0].NS, pair[1].NS)
		}
	}
	// The wrong host has the others as peers all the same: the keys
	// differ, not the peer lists.
	c.checkWGDevice(h3, "flannel-wg", 51820, 2, true, false)
}

func execOut(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
