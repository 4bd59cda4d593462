package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/tools/lab"
)

// storedLeases reads every lease value in etcd, by key.
func (c *cluster) storedLeases() map[string]string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), "/coreos.com/network/subnets/")] = string(kv.Value)
	}
	return out
}

// leaseOf returns the stored lease of host h (by its subnet).
func (c *cluster) leaseOf(h *lab.Host) lease.Lease {
	c.t.Helper()
	key := lease.MakeKey(c.subnets[h.Index], c.subnets6[h.Index])
	v, ok := c.storedLeases()[key]
	if !ok {
		c.t.Fatalf("%s: no lease %s in etcd", h.NS, key)
	}
	l, err := lease.Decode(key, []byte(v))
	if err != nil {
		c.t.Fatalf("%s: lease %s: %v", h.NS, v, err)
	}
	return l
}

// TestMixedExtension: two upstream flanneld (v0.28.9) and two of ours
// with the extension backend, whose commands route each peer's subnet
// (host-gw done by `ip route`, as upstream's documentation shows, without
// a shell): every pod reaches every other; our leases carry the
// PreStartupCommand's output as upstream's do; a peer that leaves has its
// route removed by SubnetRemoveCommand on both implementations' hosts.
func TestMixedExtension(t *testing.T) {
	up := upstreamFlanneld(t)
	const n = 105
	netconf := fmt.Sprintf(`{"Network":"10.%d.0.0/16","Backend":{"Type":"extension",`+
		`"PreStartupCommand":"/bin/echo ready",`+
		`"SubnetAddCommand":"/usr/sbin/ip route replace $SUBNET via $PUBLIC_IP",`+
		`"SubnetRemoveCommand":"/usr/sbin/ip route del $SUBNET via $PUBLIC_IP"}}`, n)
	c := newCluster(t, "wtex", 4, fmt.Sprintf("198.18.%d.0/24", n), netconf)
	c.Hosts[0].Flanneld, c.Hosts[1].Flanneld = up, up
	c.startOneByOne("--healthz-ip=127.0.0.1", "--healthz-port=9107")
	for _, h := range c.Hosts {
		l := c.leaseOf(h)
		if l.Attrs.BackendType != "extension" || string(l.Attrs.BackendData) != `"ready"` || l.Attrs.PublicIP != h.IP {
			t.Errorf("%s: lease attrs %+v (data %s)", h.NS, l.Attrs, l.Attrs.BackendData)
		}
	}
	var pods []*lab.Pod
	for _, h := range c.Hosts {
		pods = append(pods, c.addPod(h, "p1"))
	}
	if got := c.podMatrix(pods, 20*time.Second); got != 12 {
		t.Errorf("%d of 12 pod pairs answered", got)
	}

	// Host 3 (ours) leaves: its lease is deleted, and every other host
	// runs SubnetRemoveCommand for it.
	gone := c.Hosts[2]
	if err := c.Stop(gone, 15); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.etcd.Delete(ctx, "/coreos.com/network/subnets/"+lease.MakeKey(c.subnets[gone.Index], c.subnets6[gone.Index])); err != nil {
		t.Fatal(err)
	}
	route := c.subnets[gone.Index].String()
	for _, h := range []*lab.Host{c.Hosts[0], c.Hosts[1], c.Hosts[3]} {
		took := waitFor(t, h.NS+": route to the gone peer removed", 10*time.Second, func() bool {
			return !strings.Contains(c.sh(h, "ip", "-4", "route", "show", route), route)
		})
		t.Logf("%s (%s): route to %s removed %s after the lease was deleted", h.NS, flavour(h, up), route, took.Round(time.Millisecond))
	}
	{
		h := c.Hosts[3]
		_, m := c.curl(h, "http://127.0.0.1:9107/metrics")
		if v := sample(m, "flannel_extension_commands_total", `command="SubnetRemoveCommand",result="ok"`); v != 1 {
			t.Errorf("%s: %v SubnetRemoveCommand runs counted, want 1", h.NS, v)
		}
		if v := sample(m, "flannel_extension_commands_total", `command="SubnetAddCommand",result="ok"`); v < 3 {
			t.Errorf("%s: %v SubnetAddCommand runs counted, want ≥ 3", h.NS, v)
		}
	}
}

// sample returns the value of metric name with exactly the given labels
// (`a="x",b="y"`) in a Prometheus text body, or 0.
func sample(body, name, labels string) float64 {
	prefix := name + "{" + labels + "} "
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func flavour(h *lab.Host, up string) string {
	if h.Flanneld == up {
		return "upstream"
	}
	return "weft"
}

// TestMixedAlloc: two upstream flanneld and two of ours with the alloc
// backend: every host leases a subnet in one format (PublicIP, no backend
// type), writes a subnet.env that matches its lease with the underlay's
// MTU, and ours list the three others as peers and create no device.
func TestMixedAlloc(t *testing.T) {
	up := upstreamFlanneld(t)
	const n = 106
	c := newCluster(t, "wtal", 4, fmt.Sprintf("198.18.%d.0/24", n), fmt.Sprintf(`{"Network":"10.%d.0.0/16","Backend":{"Type":"alloc"}}`, n))
	c.Hosts[0].Flanneld, c.Hosts[1].Flanneld = up, up
	c.startOneByOne()
	stored := c.storedLeases()
	if len(stored) != 4 {
		t.Fatalf("%d leases in etcd, want 4: %v", len(stored), stored)
	}
	for _, h := range c.Hosts {
		key := lease.MakeKey(c.subnets[h.Index], c.subnets6[h.Index])
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, h.IP)
		if got := stored[key]; got != want {
			t.Errorf("%s (%s): lease %s = %s\nwant %s", h.NS, flavour(h, up), key, got, want)
		}
		env := c.sh(h, "cat", h.SubnetFile)
		if !strings.Contains(env, "FLANNEL_MTU=1500\n") || !strings.Contains(env, "FLANNEL_SUBNET="+c.subnets[h.Index].Addr().Next().String()+"/") {
			t.Errorf("%s (%s): subnet.env\n%s", h.NS, flavour(h, up), env)
		}
	}
	for _, h := range c.Hosts[2:] {
		var st struct {
			Daemon struct {
				Backend string
				Peers   []json.RawMessage
			}
		}
		out, _ := c.Exec(context.Background(), h, weftBin, "status", "--json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("%s: weft status: %v\n%s", h.NS, err, out)
		}
		if st.Daemon.Backend != "alloc" || len(st.Daemon.Peers) != 3 {
			t.Errorf("%s: status backend %q with %d peers, want alloc with 3", h.NS, st.Daemon.Backend, len(st.Daemon.Peers))
		}
		if links := c.sh(h, "ip", "-o", "link", "show"); strings.Contains(links, "flannel") {
			t.Errorf("%s: alloc created a device:\n%s", h.NS, links)
		}
	}
}
