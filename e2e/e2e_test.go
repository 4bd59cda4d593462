// Package e2e runs real flanneld processes in network namespaces against an
// embedded etcd and checks the overlay end to end: reachability, drift
// repair, restarts without loss, lease removal. It needs root (CI is root).
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/tools/lab"
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
