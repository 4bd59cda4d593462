// Package e2e runs real flanneld processes in network namespaces against an
// embedded etcd and checks the overlay end to end: reachability, drift
// repair, restarts without loss, lease removal. It needs root (CI is root).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/subnetenv"
)

// binDir holds what `make build` builds: flanneld, weft, the flannel CNI
// plugin and the reference plugins it delegates to.
var binDir, flanneldBin, weftBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: needs root (network namespaces); CI runs as root")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "weft-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir, flanneldBin, weftBin = dir, filepath.Join(dir, "flanneld"), filepath.Join(dir, "weft")
	args := []string{"build", "-o", dir + "/", "github.com/weft-net/weft/cmd/...",
		"github.com/containernetworking/plugins/plugins/main/bridge",
		"github.com/containernetworking/plugins/plugins/ipam/host-local",
		"github.com/containernetworking/plugins/plugins/main/loopback",
		"github.com/containernetworking/plugins/plugins/meta/portmap"}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type cluster struct {
	*lab.Cluster
	t        *testing.T
	etcd     *clientv3.Client
	subnets  []netip.Prefix // leased subnet per host, once up
	subnets6 []netip.Prefix // leased IPv6 subnet per host, when enabled
}

func newCluster(t *testing.T, name string, hosts int, underlay, netconf string) *cluster {
	t.Helper()
	return newClusterV6(t, name, hosts, underlay, "", netconf)
}

func newClusterV6(t *testing.T, name string, hosts int, underlay, underlayV6, netconf string) *cluster {
	t.Helper()
	var u6 netip.Prefix
	if underlayV6 != "" {
		u6 = netip.MustParsePrefix(underlayV6)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	c, err := lab.New(ctx, lab.Options{
		Name: name, Hosts: hosts, Underlay: netip.MustParsePrefix(underlay), UnderlayV6: u6,
		Dir: dir, Flanneld: flanneldBin,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range c.Hosts {
				b, _ := os.ReadFile(h.LogFile)
				t.Logf("---- %s flanneld log ----\n%s", h.NS, b)
			}
		}
		c.Close()
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	if netconf != "" { // "": the caller configures the network (kube mode)
		if _, err := cli.Put(ctx, "/coreos.com/network/config", netconf); err != nil {
			t.Fatal(err)
		}
	}
	return &cluster{Cluster: c, t: t, etcd: cli, subnets: make([]netip.Prefix, hosts), subnets6: make([]netip.Prefix, hosts)}
}

// startAll starts flanneld everywhere and waits for every subnet.env.
func (c *cluster) startAll(extra ...string) {
	c.t.Helper()
	for _, h := range c.Hosts {
		if err := c.Start(h, extra...); err != nil {
			c.t.Fatal(err)
		}
	}
	for _, h := range c.Hosts {
		c.subnets[h.Index] = c.waitSubnet(h)
		if e, err := subnetenv.Read(h.SubnetFile); err == nil {
			c.subnets6[h.Index] = subnetenv.LeasedSubnet(e.IPv6Subnet)
		}
	}
}

// startOneByOne starts flanneld on each host in turn, waiting for its
// subnet.env before starting the next. Upstream flanneld needs this: two
// instances allocating at the same moment can pick the same subnet, and
// the loser of the create-if-absent exits ("subnet already exists").
func (c *cluster) startOneByOne(extra ...string) {
	c.t.Helper()
	for _, h := range c.Hosts {
		if err := c.Start(h, extra...); err != nil {
			c.t.Fatal(err)
		}
		c.subnets[h.Index] = c.waitSubnet(h)
		if e, err := subnetenv.Read(h.SubnetFile); err == nil {
			c.subnets6[h.Index] = subnetenv.LeasedSubnet(e.IPv6Subnet)
		}
	}
}

func (c *cluster) waitSubnet(h *lab.Host) netip.Prefix {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if e, err := subnetenv.Read(h.SubnetFile); err == nil && (e.Subnet.IsValid() || e.IPv6Subnet.IsValid()) {
			return subnetenv.LeasedSubnet(e.Subnet)
		}
		if done, err := h.Exited(); done {
			c.t.Fatalf("%s: flanneld exited: %v", h.NS, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("%s: no subnet.env after 30s", h.NS)
	return netip.Prefix{}
}

func (c *cluster) sh(h *lab.Host, cmd string, args ...string) string {
	c.t.Helper()
	out, err := c.Exec(context.Background(), h, cmd, args...)
	if err != nil {
		c.t.Fatalf("%s: %s %s: %v\n%s", h.NS, cmd, strings.Join(args, " "), err, out)
	}
	return out
}

// addBridge gives each host a cni0 bridge holding its subnet's first
// address, as the CNI bridge plugin would, so subnet-to-subnet traffic
// can be tested without pods.
func (c *cluster) addBridges() {
	for _, h := range c.Hosts {
		c.sh(h, "ip", "link", "add", "name", "cni0", "type", "bridge")
		if s := c.subnets[h.Index]; s.IsValid() {
			c.sh(h, "ip", "addr", "add", subnetenv.GatewayOf(s).String(), "dev", "cni0")
		}
		if s := c.subnets6[h.Index]; s.IsValid() {
			c.sh(h, "ip", "addr", "add", subnetenv.GatewayOf(s).String(), "dev", "cni0", "nodad")
		}
		c.sh(h, "ip", "link", "set", "cni0", "up")
	}
}

// pingUntil pings dst from h (optionally from src) until one reply or the
// deadline.
func (c *cluster) pingUntil(h *lab.Host, src, dst netip.Addr, within time.Duration) error {
	deadline := time.Now().Add(within)
	var out string
	for {
		args := []string{"-c", "1", "-W", "1"}
		if src.IsValid() {
			args = append(args, "-I", src.String())
		}
		o, err := c.Exec(context.Background(), h, "ping", append(args, dst.String())...)
		if err == nil {
			return nil
		}
		out = o
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: ping %s from %v: %s", h.NS, dst, src, strings.TrimSpace(out))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// matrix checks that every host reaches every other host's subnet gateway
// (cni0), sourced from its own, in every family the cluster leases.
func (c *cluster) matrix(within time.Duration) {
	c.t.Helper()
	for _, subnets := range [][]netip.Prefix{c.subnets, c.subnets6} {
		for _, a := range c.Hosts {
			for _, b := range c.Hosts {
				if a == b || !subnets[a.Index].IsValid() {
					continue
				}
				src := subnetenv.GatewayOf(subnets[a.Index]).Addr()
				dst := subnetenv.GatewayOf(subnets[b.Index]).Addr()
				if err := c.pingUntil(a, src, dst, within); err != nil {
					c.t.Error(err)
				}
			}
		}
	}
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// lossDuring pings at 100 pps from a to dst for d while fn runs, and
// returns transmitted and lost packet counts.
func (c *cluster) lossDuring(a *lab.Host, src, dst netip.Addr, d time.Duration, fn func()) (sent, lost int) {
	c.t.Helper()
	n := int(d / (10 * time.Millisecond))
	cmd := exec.Command("ip", "netns", "exec", a.NS, "ping", "-q", "-i", "0.01", "-W", "1", "-c", strconv.Itoa(n), "-I", src.String(), dst.String())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	fn()
	_ = cmd.Wait() // non-zero exit when packets were lost; counted below
	m := pingStats.FindStringSubmatch(out.String())
	if m == nil {
		c.t.Fatalf("no ping statistics in %q", out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	recv, _ := strconv.Atoi(m[2])
	return sent, sent - recv
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func TestVXLAN(t *testing.T) {
	c := newCluster(t, "wtvx", 3, "198.18.11.0/24", `{"Network":"10.11.0.0/16","Backend":{"Type":"vxlan"}}`)
	c.startAll("--resync-period=2s")
	c.addBridges()
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	t.Run("flannel.1 addresses reachable", func(t *testing.T) {
		for _, a := range c.Hosts {
			for _, b := range c.Hosts {
				if a != b {
					if err := c.pingUntil(a, netip.Addr{}, c.subnets[b.Index].Addr(), 15*time.Second); err != nil {
						t.Error(err)
					}
				}
			}
		}
	})
	t.Run("subnet to subnet", func(t *testing.T) { c.matrix(15 * time.Second) })

	t.Run("drift repaired", func(t *testing.T) {
		peer := c.subnets[h2.Index]
		mac := strings.Fields(c.sh(h1, "ip", "neigh", "show", peer.Addr().String(), "dev", "flannel.1"))
		if len(mac) < 3 {
			t.Fatalf("no neighbour for %s on %s: %v", peer.Addr(), h1.NS, mac)
		}
		lladdr := mac[2]
		checks := []struct {
			name    string
			del     []string
			present func() bool
		}{
			{"route", []string{"ip", "route", "del", peer.String()}, func() bool {
				return strings.Contains(c.sh(h1, "ip", "route", "show", peer.String()), "flannel.1")
			}},
			{"neighbour", []string{"ip", "neigh", "del", peer.Addr().String(), "dev", "flannel.1"}, func() bool {
				return strings.Contains(c.sh(h1, "ip", "neigh", "show", peer.Addr().String(), "dev", "flannel.1"), "PERMANENT")
			}},
			{"fdb", []string{"bridge", "fdb", "del", lladdr, "dev", "flannel.1", "dst", h2.IP.String()}, func() bool {
				return strings.Contains(c.sh(h1, "bridge", "fdb", "show", "dev", "flannel.1"), lladdr)
			}},
			{"device", []string{"ip", "link", "del", "flannel.1"}, func() bool {
				return strings.Contains(c.sh(h1, "ip", "route", "show", peer.String()), "flannel.1")
			}},
		}
		for _, ck := range checks {
			c.sh(h1, ck.del[0], ck.del[1:]...)
			took := waitFor(t, ck.name+" to come back", 5*time.Second, ck.present)
			t.Logf("%s deleted by hand: back after %s", ck.name, took.Round(time.Millisecond))
		}
		if err := c.pingUntil(h1, netip.Addr{}, peer.Addr(), 10*time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("restart loses no packets", func(t *testing.T) {
		src := subnetenv.GatewayOf(c.subnets[h1.Index]).Addr()
		dst := subnetenv.GatewayOf(c.subnets[h2.Index]).Addr()
		for _, victim := range []*lab.Host{h2, h1} {
			sent, lost := c.lossDuring(h1, src, dst, 3*time.Second, func() {
				time.Sleep(500 * time.Millisecond)
				if err := c.Stop(victim, syscall.SIGTERM); err != nil {
					t.Errorf("%s: flanneld exit on SIGTERM: %v", victim.NS, err)
				}
				if err := c.Start(victim, "--resync-period=2s"); err != nil {
					t.Fatal(err)
				}
				if got := c.waitSubnet(victim); got != c.subnets[victim.Index] {
					t.Errorf("%s: subnet changed across restart: %s -> %s", victim.NS, c.subnets[victim.Index], got)
				}
			})
			t.Logf("restart of %s under 100 pps: %d sent, %d lost", victim.NS, sent, lost)
			if lost != 0 {
				t.Errorf("restart of %s lost %d of %d packets", victim.NS, lost, sent)
			}
		}
	})

	t.Run("own lease deleted is reclaimed", func(t *testing.T) {
		// Deleted by hand (or expired while h3 was cut off): h3 writes the
		// same subnet back and keeps running (docs/RELIABILITY.md).
		mine := c.subnets[h3.Index]
		key := "/coreos.com/network/subnets/" + strings.Replace(mine.String(), "/", "-", 1)
		if _, err := c.etcd.Delete(context.Background(), key); err != nil {
			t.Fatal(err)
		}
		waitFor(t, h3.NS+" to reclaim "+mine.String(), 10*time.Second, func() bool {
			resp, err := c.etcd.Get(context.Background(), key)
			return err == nil && len(resp.Kvs) == 1 && strings.Contains(string(resp.Kvs[0].Value), h3.IP.String())
		})
		if done, err := h3.Exited(); done {
			t.Fatalf("%s: flanneld exited after its lease was deleted: %v", h3.NS, err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			waitFor(t, h.NS+" route to "+mine.String(), 5*time.Second, func() bool {
				return strings.Contains(c.sh(h, "ip", "route", "show", mine.String()), "flannel.1")
			})
		}
	})

	t.Run("lease removal removes routes", func(t *testing.T) {
		// h3 stopped (its lease stays, as after SIGTERM), then its lease
		// deleted: the others drop its routes.
		if err := c.Stop(h3, syscall.SIGTERM); err != nil {
			t.Errorf("%s: flanneld exit on SIGTERM: %v", h3.NS, err)
		}
		gone := c.subnets[h3.Index]
		key := "/coreos.com/network/subnets/" + strings.Replace(gone.String(), "/", "-", 1)
		if _, err := c.etcd.Delete(context.Background(), key); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			waitFor(t, h.NS+" to drop the route to "+gone.String(), 5*time.Second, func() bool {
				return strings.TrimSpace(c.sh(h, "ip", "route", "show", gone.String())) == ""
			})
		}
	})
}

func TestHostGW(t *testing.T) {
	c := newCluster(t, "wthg", 3, "198.18.12.0/24", `{"Network":"10.12.0.0/16","Backend":{"Type":"host-gw"}}`)
	c.startAll()
	c.addBridges()
	c.matrix(15 * time.Second)
	route := c.sh(c.Hosts[0], "ip", "route", "show", c.subnets[1].String())
	if !strings.Contains(route, "via "+c.Hosts[1].IP.String()) {
		t.Errorf("host-gw route = %q, want via %s", route, c.Hosts[1].IP)
	}
}

func TestVXLANDirectRouting(t *testing.T) {
	c := newCluster(t, "wtdr", 3, "198.18.13.0/24", `{"Network":"10.13.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	c.startAll()
	c.addBridges()
	c.matrix(15 * time.Second)
	route := c.sh(c.Hosts[0], "ip", "route", "show", c.subnets[1].String())
	if !strings.Contains(route, "via "+c.Hosts[1].IP.String()+" dev eth0") {
		t.Errorf("direct route = %q, want via %s dev eth0", route, c.Hosts[1].IP)
	}
}

func TestDualStackVXLAN(t *testing.T) {
	c := newClusterV6(t, "wtds", 3, "198.18.14.0/24", "fd00:198:18:14::/64",
		`{"Network":"10.14.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:14::/48","Backend":{"Type":"vxlan"}}`)
	c.startAll()
	for i, s := range c.subnets6 {
		if !s.IsValid() || !c.subnets[i].IsValid() {
			t.Fatalf("host %d: subnets %v / %v, want both families", i, c.subnets[i], s)
		}
	}
	c.addBridges()
	c.matrix(15 * time.Second)
	// The v6 device's MTU leaves room for the 40-byte IPv6 outer header.
	link := c.sh(c.Hosts[0], "ip", "link", "show", "flannel-v6.1")
	if !strings.Contains(link, "mtu 1430") {
		t.Errorf("flannel-v6.1 = %q, want mtu 1430", link)
	}
}

func TestIPv6OnlyHostGW(t *testing.T) {
	c := newClusterV6(t, "wt6h", 3, "198.18.15.0/24", "fd00:198:18:15::/64",
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:15::/48","Backend":{"Type":"host-gw"}}`)
	c.startAll()
	c.addBridges()
	c.matrix(15 * time.Second)
}

func (c *cluster) curl(h *lab.Host, url string) (int, string) {
	c.t.Helper()
	out, err := c.Exec(context.Background(), h, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5", url)
	if err != nil {
		return 0, out
	}
	i := strings.LastIndexByte(strings.TrimRight(out, "\n"), '\n')
	code, _ := strconv.Atoi(strings.TrimSpace(out[i+1:]))
	return code, out[:i+1]
}

func metricValue(body, name string) float64 {
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name) && (len(line) > len(name) && (line[len(name)] == ' ' || line[len(name)] == '{')) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func TestHealthAndMetrics(t *testing.T) {
	c := newCluster(t, "wthm", 2, "198.18.16.0/24", `{"Network":"10.16.0.0/16"}`)
	c.startAll("--healthz-ip=127.0.0.1", "--healthz-port=9101", "--resync-period=1s")
	h := c.Hosts[0]
	base := "http://127.0.0.1:9101"
	waitFor(t, "readyz 200", 10*time.Second, func() bool { code, _ := c.curl(h, base+"/readyz"); return code == 200 })
	if code, body := c.curl(h, base+"/healthz"); code != 200 {
		t.Errorf("healthz = %d %q", code, body)
	}
	_, body := c.curl(h, base+"/metrics")
	if v := metricValue(body, "flannel_peers"); v != 1 {
		t.Errorf("flannel_peers = %v, want 1\n%s", v, body)
	}
	for _, name := range []string{"flannel_reconcile_passes_total", "flannel_lease_expiry_timestamp_seconds", "flannel_kernel_objects_changed_total"} {
		if metricValue(body, name) <= 0 {
			t.Errorf("%s not positive", name)
		}
	}

	// Drift shows up as repairs.
	c.sh(h, "ip", "route", "del", c.subnets[1].String())
	waitFor(t, "repair counted", 10*time.Second, func() bool {
		_, body := c.curl(h, base+"/metrics")
		return metricValue(body, "flannel_kernel_objects_repaired_total") >= 1
	})

	// etcd goes away: the node stays ready, saying since when the store is
	// unreachable, and the watch restarts are counted.
	c.Etcd.Close()
	waitFor(t, "watch restarts counted", 60*time.Second, func() bool {
		_, body := c.curl(h, base+"/metrics")
		return metricValue(body, "flannel_store_watch_restarts_total") >= 1 &&
			metricValue(body, "flannel_store_unreachable_since_timestamp_seconds") > 0
	})
	if code, body := c.curl(h, base+"/readyz"); code != 200 || !strings.HasPrefix(body, "ok\nstore unreachable since ") {
		t.Errorf("readyz with etcd down = %d %q, want 200 saying the store is unreachable", code, body)
	}
	if err := c.pingUntil(h, netip.Addr{}, c.subnets[1].Addr(), 5*time.Second); err != nil {
		t.Errorf("overlay with etcd down: %v", err)
	}

	// The status is not on the network (no --healthz-status)...
	if code, body := c.curl(h, base+"/v1/status"); code != 404 {
		t.Errorf("/v1/status on the healthz listener = %d %q, want 404", code, body)
	}
	if out, err := c.Exec(context.Background(), h, weftBin, "status", "--url", base); err == nil || !strings.Contains(out, "--healthz-status") {
		t.Errorf("weft status --url without --healthz-status: %v\n%s", err, out)
	}
	// ...but on a socket beside the subnet file that only root may open.
	sock := filepath.Join(filepath.Dir(h.SubnetFile), "weft.sock")
	if fi, err := os.Stat(sock); err != nil {
		t.Errorf("status socket: %v", err)
	} else if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("status socket %s: mode %v, want a socket with 0600", sock, fi.Mode())
	}
	// weft status on the host, with no flags (the lab shows each host its
	// own directory as /run/flannel): one peer, kernel in sync with the plan.
	out, err := c.Exec(context.Background(), h, weftBin, "status", "--json")
	if err != nil {
		t.Fatalf("weft status: %v\n%s", err, out)
	}
	var st struct {
		Daemon struct {
			Lease struct{ Subnet string }
			Peers []struct{ Subnet string }
		}
		Drift struct {
			Desired        int
			Missing, Extra []string
		}
		Readyz string
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("weft status --json: %v\n%s", err, out)
	}
	if st.Daemon.Lease.Subnet != c.subnets[0].String() || len(st.Daemon.Peers) != 1 || !strings.HasPrefix(st.Readyz, "ok\nstore unreachable since ") {
		t.Errorf("weft status = %s", out)
	}
	if st.Drift.Desired == 0 || len(st.Drift.Missing) != 0 || len(st.Drift.Extra) != 0 {
		t.Errorf("weft status drift = %+v, want in sync", st.Drift)
	}
}

// nftCounter installs a counting rule in ns for ICMP echo requests from
// src and returns a function reading the count.
func (c *cluster) nftCounter(ns string, src netip.Addr) func() int {
	c.t.Helper()
	run := func(args ...string) string {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			c.t.Fatalf("nft %v in %s: %v\n%s", args, ns, err, out)
		}
		return string(out)
	}
	run("add", "table", "ip", "wtcount")
	run("add", "chain", "ip", "wtcount", "in", "{ type filter hook input priority 0 ; }")
	run("add", "rule", "ip", "wtcount", "in", "ip", "saddr", src.String(), "icmp", "type", "echo-request", "counter")
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() int {
		m := re.FindStringSubmatch(run("list", "chain", "ip", "wtcount", "in"))
		if m == nil {
			return 0
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
}

func TestIPMasq(t *testing.T) {
	c := newCluster(t, "wtmq", 2, "198.18.17.0/24", `{"Network":"10.17.0.0/16"}`)
	// An "external" host on the underlay with no route to the pod network:
	// a pod's packet comes back only if it was masqueraded to the host.
	ext := "wtmq-ext"
	extIP := netip.MustParseAddr("198.18.17.200")
	for _, args := range [][]string{
		{"netns", "add", ext},
		{"-n", c.Hub, "link", "add", "name", "wtmq-vx", "type", "veth", "peer", "name", "eth0", "netns", ext},
		{"-n", c.Hub, "link", "set", "wtmq-vx", "master", "br0", "up"},
		{"-n", ext, "addr", "add", extIP.String() + "/24", "dev", "eth0"},
		{"-n", ext, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ext).Run() })
	c.startAll("--ip-masq")
	c.addBridges()
	h1, h2 := c.Hosts[0], c.Hosts[1]
	pod1 := subnetenv.GatewayOf(c.subnets[h1.Index]).Addr()
	pod2 := subnetenv.GatewayOf(c.subnets[h2.Index]).Addr()

	seenAsHost := c.nftCounter(ext, h1.IP)
	if err := c.pingUntil(h1, pod1, extIP, 15*time.Second); err != nil {
		t.Fatalf("pod to external with --ip-masq: %v", err)
	}
	if seenAsHost() == 0 {
		t.Error("the external host did not see the host's address as the source")
	}

	// Pod to pod keeps the pod's address.
	seenAsPod := c.nftCounter(h2.NS, pod1)
	if err := c.pingUntil(h1, pod1, pod2, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if seenAsPod() == 0 {
		t.Error("pod-to-pod traffic was masqueraded (peer did not see the pod's address)")
	}

	// A deleted rule is restored by the resync (default --iptables-resync 5s).
	mode := "nftables"
	if _, err := exec.LookPath("iptables"); err == nil {
		mode = "iptables"
	}
	if mode == "iptables" {
		c.sh(h1, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
		waitFor(t, "masquerade rules restored", 15*time.Second, func() bool {
			return strings.Contains(c.sh(h1, "iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"), "MASQUERADE")
		})
	} else {
		c.sh(h1, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
		waitFor(t, "masquerade rules restored", 15*time.Second, func() bool {
			return strings.Contains(c.sh(h1, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg"), "masquerade")
		})
	}
}
