package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/tools/lab"
)

// The udp backend: flannel0, a TUN served by a forwarder inside flanneld,
// carrying each pod packet as the payload of one UDP datagram on port
// 8285 (upstream's wire format: e2e TestUDPMixedCluster).

const udpNet = `{"Network":"10.100.0.0/16","Backend":{"Type":"udp"}}`

// TestUDP runs 3 hosts with our udp backend: the pod matrix, flannel0's
// MTU, the lease as upstream writes it, weft status (the forwarder's
// table, in sync), the metrics, and weft leases.
func TestUDP(t *testing.T) {
	c := newCluster(t, "wtud0", 3, "198.18.100.0/24", udpNet)
	c.startAll("--resync-period=2s", "--healthz-ip=127.0.0.1", "--healthz-port=9103")
	var pods []*lab.Pod
	for _, h := range c.Hosts {
		pods = append(pods, c.addPod(h, "p1"))
	}
	if got := c.podMatrix(pods, 20*time.Second); got != 6 {
		t.Fatalf("%d of 6 pod pairs answered", got)
	}
	h1 := c.Hosts[0]
	if mtu := c.linkMTU(h1, "flannel0"); mtu != 1472 {
		t.Errorf("flannel0 mtu %d, want 1472 (underlay 1500 less 28)", mtu)
	}
	// The kernel sends the pods' packets to flannel0 by one route for the
	// whole network, as upstream.
	if r := c.sh(h1, "ip", "route", "show", "10.100.0.0/16"); !strings.Contains(r, "dev flannel0") {
		t.Errorf("route to the network: %q, want it through flannel0", r)
	}
	c.checkUDPLeases()
	c.checkUDPStatus(h1, 2)
	_, body := c.curl(h1, "http://127.0.0.1:9103/metrics")
	if v := metricValue(body, `flannel_udp_peers{device="flannel0"}`); v != 2 {
		t.Errorf("flannel_udp_peers = %v, want 2", v)
	}
	if v := metricValue(body, `flannel_udp_packets_total{device="flannel0",direction="tx"}`); v < 4 {
		t.Errorf("flannel_udp_packets_total tx = %v, want the pings counted", v)
	}
	if v := metricValue(body, `flannel_peers{backend="udp"}`); v != 2 {
		t.Errorf(`flannel_peers{backend="udp"} = %v, want 2`, v)
	}
	out, err := execOut(weftBin, "leases", "--etcd-endpoints", c.EtcdClientURL)
	if err != nil || strings.Count(out, "10.100.") < 3 {
		t.Errorf("weft leases: %v\n%s", err, out)
	}
}

// checkUDPLeases checks every lease is what upstream's udp backend writes:
// the public IP, nothing else.
func (c *cluster) checkUDPLeases() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	want := map[string]bool{}
	for _, h := range c.Hosts {
		want[`{"PublicIP":"`+h.IP.String()+`","PublicIPv6":null}`] = true
	}
	for _, kv := range resp.Kvs {
		if !want[string(kv.Value)] {
			c.t.Errorf("lease %s = %s, want {\"PublicIP\":…,\"PublicIPv6\":null} of a host", kv.Key, kv.Value)
		}
	}
	if len(resp.Kvs) != len(c.Hosts) {
		c.t.Errorf("%d leases, want %d", len(resp.Kvs), len(c.Hosts))
	}
}

// checkUDPStatus checks weft status on h: backend udp, the forwarder's
// table with peers entries, and the kernel and table in sync with the
// desired state.
func (c *cluster) checkUDPStatus(h *lab.Host, peers int) {
	c.t.Helper()
	out, err := c.Exec(context.Background(), h, weftBin, "status", "--json")
	if err != nil {
		c.t.Fatalf("weft status: %v\n%s", err, out)
	}
	var st struct {
		Daemon struct {
			Backend string
			Peers   []struct{ Subnet string }
			UDP     []struct {
				Name  string
				Port  int
				Peers []struct{ Subnet, Endpoint string }
			}
		}
		Drift struct {
			Desired        int
			Missing, Extra []string
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("weft status --json: %v\n%s", err, out)
	}
	if st.Daemon.Backend != "udp" || len(st.Daemon.Peers) != peers {
		c.t.Errorf("weft status daemon = %+v", st.Daemon)
	}
	if len(st.Daemon.UDP) != 1 || st.Daemon.UDP[0].Name != "flannel0" || st.Daemon.UDP[0].Port != 8285 || len(st.Daemon.UDP[0].Peers) != peers {
		c.t.Errorf("weft status udp = %+v, want flannel0 on 8285 with %d peers", st.Daemon.UDP, peers)
	}
	if st.Drift.Desired == 0 || len(st.Drift.Missing) != 0 || len(st.Drift.Extra) != 0 {
		c.t.Errorf("weft status drift = %+v, want in sync", st.Drift)
	}
	text, err := c.Exec(context.Background(), h, weftBin, "status")
	if err != nil || !strings.Contains(text, fmt.Sprintf("udp flannel0: forwarder in flanneld, %s port 8285, %d peers", h.IP, peers)) {
		c.t.Errorf("weft status: %v\n%s", err, text)
	}
}

// TestUDPRestartAndRepair: flannel0 goes away with flanneld (as
// upstream's) and comes back with its table when it restarts, on the
// same subnet; a flannel0 deleted by hand is made again by the periodic
// full pass; a peer that leaves is dropped from the table.
func TestUDPRestartAndRepair(t *testing.T) {
	c := newCluster(t, "wtud2", 3, "198.18.102.0/24", `{"Network":"10.102.0.0/16","Backend":{"Type":"udp"}}`)
	c.startAll("--resync-period=2s")
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
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
		if _, err := c.Exec(context.Background(), h2, "ip", "link", "show", "flannel0"); err == nil {
			t.Errorf("%s: flannel0 outlived flanneld", h2.NS)
		}
		if err := c.Start(h2, "--resync-period=2s"); err != nil {
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
		t.Logf("restart of %s under 100 pps: %d sent, %d lost (%.0f ms of traffic); pods reached again %s after SIGTERM",
			h2.NS, sent, lost, float64(lost)*10, back.Round(time.Millisecond))
		c.checkUDPStatus(h2, 2)
	})
	t.Run("flannel0 deleted by hand comes back", func(t *testing.T) {
		c.sh(h1, "ip", "link", "del", "flannel0")
		took := waitFor(t, "flannel0 and its route to come back", 10*time.Second, func() bool {
			out, err := c.Exec(context.Background(), h1, "ip", "route", "show", "10.102.0.0/16")
			return err == nil && strings.Contains(out, "flannel0")
		})
		t.Logf("flannel0 deleted: back with its route after %s", took.Round(time.Millisecond))
		if err := podPing(p1, p2.IPv4.String(), 10*time.Second); err != nil {
			t.Error(err)
		}
		c.checkUDPStatus(h1, 2)
	})
	t.Run("peer leaves", func(t *testing.T) {
		if err := c.Stop(h3, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		key := "/coreos.com/network/subnets/" + strings.Replace(c.subnets[h3.Index].String(), "/", "-", 1)
		if _, err := c.etcd.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the leaving peer to go from the table", 10*time.Second, func() bool {
			out, _ := c.Exec(context.Background(), h1, weftBin, "status", "--json")
			var st struct {
				Daemon struct{ UDP []struct{ Peers []any } }
			}
			return json.Unmarshal([]byte(out), &st) == nil && len(st.Daemon.UDP) == 1 && len(st.Daemon.UDP[0].Peers) == 1
		})
		c.checkUDPStatus(h1, 1)
	})
}

// TestUDPMixedCluster runs two upstream flanneld (v0.28.9, its udp
// backend: the C proxy) hosts and two of ours with the udp backend against
// one etcd, pods on every host: the whole pod matrix answers, so both
// read each other's leases and speak one wire format (the bare IPv4
// packet as the UDP payload). Our hosts' forwarders count packets from
// the upstream hosts, and their status is in sync.
func TestUDPMixedCluster(t *testing.T) {
	up := upstreamFlanneld(t)
	c := newCluster(t, "wtud1", 4, "198.18.101.0/24", `{"Network":"10.101.0.0/16","Backend":{"Type":"udp"}}`)
	// Hosts 1 and 2 run upstream, 3 and 4 ours.
	c.Hosts[0].Flanneld, c.Hosts[1].Flanneld = up, up
	c.startOneByOne()
	var pods []*lab.Pod
	for _, h := range c.Hosts {
		pods = append(pods, c.addPod(h, "p1"))
	}
	if got := c.podMatrix(pods, 20*time.Second); got != 12 {
		t.Fatalf("%d of 12 pod pairs answered", got)
	}
	// Every lease, upstream's and ours, is the same bare value.
	c.checkUDPLeases()
	for _, h := range c.Hosts[2:] {
		c.checkUDPStatus(h, 3)
	}
	if mtu := c.linkMTU(c.Hosts[0], "flannel0"); mtu != 1472 {
		t.Errorf("upstream's flannel0 mtu %d, want 1472 (ours has the same)", mtu)
	}
	t.Logf("udp: 12 pod pairs answered across 2 upstream and 2 weft hosts")
	// Bulk TCP both ways between an upstream host's pod and ours: our
	// forwarder splits the kernel's 64 KiB bursts into one packet per
	// datagram, which upstream's proxy takes, and coalesces what it sends.
	for _, pair := range [][2]*lab.Pod{{pods[0], pods[2]}, {pods[2], pods[0]}} {
		mbps, err := podIperf(pair[0], pair[1])
		if err != nil {
			t.Errorf("iperf3 %s → %s: %v", pair[0].NS, pair[1].NS, err)
			continue
		}
		t.Logf("iperf3 %s → %s: %.0f Mbit/s", pair[0].Host.NS, pair[1].Host.NS, mbps)
	}
	// Takeover: host 1 swaps upstream's flanneld for ours, keeping its
	// lease (the same bare value) and subnet; upstream's flannel0 ended
	// with it and ours replaces it. Pod 3 pings pod 1 across the swap.
	h1 := c.Hosts[0]
	ping := startPing(t, "p3→p1", pods[2].NS, netip.Addr{}, pods[0].IPv4, 800)
	time.Sleep(2 * time.Second)
	if err := c.Stop(h1, syscall.SIGTERM); err != nil {
		t.Logf("%s: upstream flanneld exit on SIGTERM: %v", h1.NS, err)
	}
	h1.Flanneld = ""
	if err := c.Start(h1); err != nil {
		t.Fatal(err)
	}
	if got := c.waitSubnet(h1); got != c.subnets[h1.Index] {
		t.Errorf("%s: subnet changed across the swap: %s -> %s", h1.NS, c.subnets[h1.Index], got)
	}
	if got := c.podMatrix(pods, 20*time.Second); got != 12 {
		t.Errorf("after the swap: %d of 12 pod pairs answered", got)
	}
	sent, lost := ping.wait(t)
	t.Logf("swap of %s from upstream to weft under 100 pps: %d sent, %d lost (%d ms of traffic)", h1.NS, sent, lost, lost*10)
	c.checkUDPLeases()
	c.checkUDPStatus(h1, 3)
}

// podIperf runs iperf3 for a second from pod a to pod b and returns the
// throughput received.
func podIperf(a, b *lab.Pod) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", b.NS, "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var last error
	for try := 0; try < 20; try++ {
		time.Sleep(100 * time.Millisecond)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", a.NS, "iperf3", "-c", b.IPv4.String(), "-p", "5201", "-t", "1", "-J").Output()
		var res struct {
			End struct {
				SumReceived struct {
					Bytes         float64 `json:"bytes"`
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err == nil {
			err = json.Unmarshal(out, &res)
		}
		if err == nil && res.End.SumReceived.Bytes > 0 {
			return res.End.SumReceived.BitsPerSecond / 1e6, nil
		}
		last = fmt.Errorf("%v: %s", err, out)
	}
	return 0, last
}
