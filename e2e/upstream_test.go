package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/tools/lab"
	"github.com/weft-net/weft/internal/tools/podrt"
	"github.com/weft-net/weft/internal/tooltest"
)

// upstreamFlanneld returns the real upstream flanneld (v0.28.9, the
// version tools/upstream-flanneld/go.mod requires): $WEFT_UPSTREAM_FLANNELD
// (.ci/run sets it), else what tools/upstream-flanneld/build.sh built and
// cached; under CI a missing binary fails, never skips.
func upstreamFlanneld(t *testing.T) string {
	return tooltest.Binary(t, tooltest.Tool{Name: "upstream-flanneld", Module: "github.com/flannel-io/flannel",
		Env: "WEFT_UPSTREAM_FLANNELD", ColdBuild: "a few minutes"})
}

// pods attaches pods through our CNI plugin (kube-flannel's conflist), on
// upstream hosts reading upstream's subnet.env.
func (c *cluster) pods() lab.Pods {
	return lab.Pods{Runtime: podrt.Client{Self: weftBin, Args: []string{"pod-runtime"}}, BinDir: binDir}
}

// addPod attaches a pod named <cluster>-<suffix> to h; it is detached at
// the end of the test.
func (c *cluster) addPod(h *lab.Host, suffix string) *lab.Pod {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := c.pods().Add(ctx, h, h.NS+"-"+suffix)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.pods().Del(ctx, p)
	})
	return p
}

// podPing pings dst from pod p until one reply or the deadline.
func podPing(p *lab.Pod, dst string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		out, err := exec.Command("ip", "netns", "exec", p.NS, "ping", "-c", "1", "-W", "1", dst).CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (on %s): ping %s: %v: %s", p.NS, p.Host.NS, dst, err, strings.TrimSpace(string(out)))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// podMatrix checks that every pod reaches every other pod in each family
// they have, and returns the number of pairs that answered.
func (c *cluster) podMatrix(pods []*lab.Pod, within time.Duration) int {
	c.t.Helper()
	ok := 0
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			for _, dst := range [2]string{addrOrEmpty(b.IPv4.IsValid() && a.IPv4.IsValid(), b.IPv4.String()), addrOrEmpty(b.IPv6.IsValid() && a.IPv6.IsValid(), b.IPv6.String())} {
				if dst == "" {
					continue
				}
				if err := podPing(a, dst, within); err != nil {
					c.t.Error(err)
					continue
				}
				ok++
			}
		}
	}
	return ok
}

func addrOrEmpty(ok bool, s string) string {
	if ok {
		return s
	}
	return ""
}

// TestMixedClusters runs two upstream flanneld (v0.28.9) hosts and two of
// ours against one etcd, with pods attached through our CNI plugin on every
// host, and checks the whole pod-to-pod matrix for each backend, IPv4 and
// dual-stack: the two implementations read each other's leases and program
// each other's peers.
func TestMixedClusters(t *testing.T) {
	up := upstreamFlanneld(t)
	for i, tc := range []struct {
		name, backend string
		dual          bool
	}{
		{"vxlan", `{"Type":"vxlan"}`, false},
		{"vxlan-directrouting", `{"Type":"vxlan","DirectRouting":true}`, false},
		{"host-gw", `{"Type":"host-gw"}`, false},
		{"vxlan-dual-stack", `{"Type":"vxlan"}`, true},
		{"vxlan-directrouting-dual-stack", `{"Type":"vxlan","DirectRouting":true}`, true},
		{"host-gw-dual-stack", `{"Type":"host-gw"}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 30 + i
			netconf := fmt.Sprintf(`{"Network":"10.%d.0.0/16","Backend":%s}`, n, tc.backend)
			u6 := ""
			if tc.dual {
				netconf = fmt.Sprintf(`{"Network":"10.%d.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:%d::/56","Backend":%s}`, n, n, tc.backend)
				u6 = fmt.Sprintf("fd18:%d::/64", n)
			}
			c := newClusterV6(t, fmt.Sprintf("wtmx%d", i), 4, fmt.Sprintf("198.18.%d.0/24", n), u6, netconf)
			// Hosts 1 and 2 run upstream, 3 and 4 ours.
			c.Hosts[0].Flanneld, c.Hosts[1].Flanneld = up, up
			c.startOneByOne()
			var pods []*lab.Pod
			for _, h := range c.Hosts {
				pods = append(pods, c.addPod(h, "p1"))
			}
			want := 4 * 3
			if tc.dual {
				want *= 2
			}
			if got := c.podMatrix(pods, 20*time.Second); got != want {
				t.Errorf("%d of %d pod pairs answered", got, want)
			}
			t.Logf("%s: %d pod pairs answered across 2 upstream and 2 weft hosts", tc.name, want)
		})
	}
}
