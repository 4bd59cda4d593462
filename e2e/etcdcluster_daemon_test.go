package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/tools/lab"
)

// probeLease is a lease written by the test after a fault: its route in
// every kernel says each daemon's store connection followed the cluster.
type probeLease struct {
	subnet netip.Prefix
	ip     string
	mac    string
}

func probeLeaseN(i int) probeLease {
	return probeLease{
		subnet: netip.MustParsePrefix(fmt.Sprintf("10.86.%d.0/24", 200+i)),
		ip:     fmt.Sprintf("198.18.86.%d", 200+i),
		mac:    fmt.Sprintf("02:00:00:00:86:%02x", i),
	}
}

// probeNeedles name every kernel object a probe lease makes: excluded
// when the dataplane is compared and the change events are read.
var probeNeedles = []string{"10.86.20", "198.18.86.20", "02:00:00:00:86:"}

func isProbe(line string) bool {
	for _, n := range probeNeedles {
		if strings.Contains(line, n) {
			return true
		}
	}
	return false
}

// writeProbe writes p through the members in via and returns how long
// after the write was sent its route was in every host's kernel (a
// daemon can have it before the writer hears back).
func (c *cluster) writeProbe(p probeLease, via []*lab.EtcdMember) time.Duration {
	c.t.Helper()
	seen := make([]<-chan time.Time, len(c.Hosts))
	for i, h := range c.Hosts {
		seen[i] = routeAppears(c.t, h.NS, p.subnet)
	}
	var urls []string
	for _, m := range via {
		urls = append(urls, m.LocalURL)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, p.ip, p.mac)
	key := etcdPrefix + "/subnets/" + strings.Replace(p.subnet.String(), "/", "-", 1)
	if _, err := cli.Get(ctx, key); err != nil { // connected before the clock starts
		c.t.Fatal(err)
	}
	written := time.Now()
	if _, err := cli.Put(ctx, key, value); err != nil {
		c.t.Fatal(err)
	}
	return latest(routeTimes(c.t, c, seen, 20*time.Second)).Sub(written)
}

// overlayState is what flannel.1 carries on h, probe leases left out.
func (c *cluster) overlayState(h *lab.Host) []string {
	c.t.Helper()
	var out []string
	for _, cmd := range [][]string{
		{"ip", "route", "show", "dev", "flannel.1"},
		{"ip", "neigh", "show", "dev", "flannel.1"},
		{"bridge", "fdb", "show", "dev", "flannel.1"},
		{"ip", "-d", "link", "show", "flannel.1"},
	} {
		for _, l := range strings.Split(c.sh(h, cmd[0], cmd[1:]...), "\n") {
			if l = strings.TrimSpace(l); l != "" && !isProbe(l) {
				out = append(out, cmd[0]+" "+cmd[1]+": "+l)
			}
		}
	}
	slices.Sort(out)
	return out
}

// overlayEvents stops m and returns its lines about flannel.1 that are
// not a probe lease's objects nor the kernel's own (multicast neighbours;
// "proto kernel" routes, such as the link-local address's, which the
// kernel adds once duplicate address detection ends after the device came
// up).
func (m *monitor) overlayEvents() []string {
	time.Sleep(100 * time.Millisecond)
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	_ = m.cmd.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	var hits []string
	for _, line := range strings.Split(m.out.String(), "\n") {
		if strings.Contains(line, "flannel.1") && !isProbe(line) && !strings.Contains(line, "proto kernel") &&
			!kernelMulticastNeigh(strings.TrimPrefix(line, "Deleted ")) {
			hits = append(hits, line)
		}
	}
	return hits
}

// watchStreams is the number of watch streams a member serves.
func watchStreams(m *lab.EtcdMember) int {
	resp, err := http.Get(m.LocalURL + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return int(metricValue(string(b), "etcd_debugging_mvcc_watch_stream_total"))
}

// TestEtcdClusterMemberLoss: three hosts running flanneld on a 3-member
// etcd cluster, pods pinging across hosts at 100/s, while the leader is
// SIGKILLed, restarted on its data, then the member serving the most
// daemon watches is partitioned from its peers, then healed. No ping lost,
// no change to any overlay, /healthz 200 throughout, no daemon exits; a
// lease written after each fault is in every kernel (so every daemon's
// watch followed the cluster, off the partitioned member too).
func TestEtcdClusterMemberLoss(t *testing.T) {
	const port = 9186
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	c := newMemberCluster(t, "wtec2", 3, "198.18.86.0/24", `{"Network":"10.86.0.0/16","Backend":{"Type":"vxlan"}}`)
	ec := c.EtcdCluster
	c.startAll("--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", port))
	var pods []*lab.Pod
	for _, h := range c.Hosts {
		pods = append(pods, c.addPod(h, "p"))
	}
	for i, p := range pods {
		if err := podPing(p, pods[(i+1)%len(pods)].IPv4.String(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string][]string{}
	var monitors []*monitor
	for _, h := range c.Hosts {
		waitFor(t, h.NS+" readyz 200", 10*time.Second, func() bool { code, _ := c.curl(h, base+"/readyz"); return code == 200 })
		before[h.NS] = c.overlayState(h)
		monitors = append(monitors, startMonitor(t, h.NS))
	}
	const pings = 2800 // 28 s at 100/s: the whole sequence below (~20 s) and a margin
	var pingers []*pinger
	for i, p := range pods {
		dst := pods[(i+1)%len(pods)]
		pingers = append(pingers, startPing(t, p.NS+" -> "+dst.NS, p.NS, netip.Addr{}, dst.IPv4, pings))
	}
	health := c.pollHealth(base, 500*time.Millisecond)
	others := func(not ...*lab.EtcdMember) []*lab.EtcdMember {
		var out []*lab.EtcdMember
		for _, m := range ec.Members {
			if !slices.Contains(not, m) {
				out = append(out, m)
			}
		}
		return out
	}
	time.Sleep(2 * time.Second)

	// The leader killed.
	first, _ := c.leader(nil, 10*time.Second)
	ec.Kill(first)
	second, took := c.leader(first, 15*time.Second)
	t.Logf("leader %s killed (SIGKILL): %s named leader %v later", first.Name, second.Name, took.Round(time.Millisecond))
	t.Logf("lease written after the leader's kill: in every kernel %v after the write", c.writeProbe(probeLeaseN(1), others(first)).Round(time.Millisecond))
	time.Sleep(2 * time.Second)

	// Restarted on its data.
	restartAt := time.Now()
	if err := ec.Start(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted on its data: serving %v later", first.Name, time.Since(restartAt).Round(time.Millisecond))
	t.Logf("lease written after the restart: in every kernel %v after the write", c.writeProbe(probeLeaseN(2), ec.Members).Round(time.Millisecond))
	time.Sleep(2 * time.Second)

	// The member serving the most daemon watches partitioned (the leader
	// only if it serves strictly more).
	leader, _ := c.leader(nil, 10*time.Second)
	var target *lab.EtcdMember
	var counts []string
	for _, m := range ec.Members {
		n := watchStreams(m)
		counts = append(counts, fmt.Sprintf("%s %d", m.Name, n))
		if target == nil || n > watchStreams(target) || (n == watchStreams(target) && target == leader) {
			target = m
		}
	}
	if watchStreams(target) < 1 {
		t.Fatalf("no member serves a watch stream (%s)", strings.Join(counts, ", "))
	}
	role := "a follower"
	if target == leader {
		role = "the leader"
	}
	if err := ec.Partition(context.Background(), target); err != nil {
		t.Fatal(err)
	}
	partitionAt := time.Now()
	t.Logf("%s partitioned from its peers (%s; watch streams per member: %s)", target.Name, role, strings.Join(counts, ", "))
	if target == leader {
		l, took := c.leader(target, 15*time.Second)
		t.Logf("%s named leader %v after the partition", l.Name, took.Round(time.Millisecond))
	}
	probe3 := c.writeProbe(probeLeaseN(3), others(target))
	t.Logf("lease written right after the partition: in every kernel %v after the write (%v after the partition)",
		probe3.Round(time.Millisecond), time.Since(partitionAt).Round(time.Millisecond))
	time.Sleep(time.Until(partitionAt.Add(8 * time.Second)))
	if n := watchStreams(target); n != 0 {
		t.Errorf("%s serves %d watch streams 8 s into its partition, want 0 (every daemon moved off it)", target.Name, n)
	}
	for _, h := range c.Hosts {
		if st := c.weftStatus(h); !st.Daemon.Store.Reachable || st.Daemon.Lease.State != "held" {
			t.Errorf("%s during the partition: store %+v, lease %q; want reachable (through the other members), held", h.NS, st.Daemon.Store, st.Daemon.Lease.State)
		}
	}

	// Healed.
	if err := ec.Heal(context.Background(), target); err != nil {
		t.Fatal(err)
	}
	rejoined := waitFor(t, target.Name+" to follow a leader again", 15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := target.Status(ctx)
		l, lerr := ec.Leader(ctx)
		return err == nil && lerr == nil && st.Leader != 0 && (l == target || st.Leader != st.Header.MemberId)
	})
	t.Logf("%s healed: follows a leader %v later", target.Name, rejoined.Round(time.Millisecond))
	t.Logf("lease written after the heal: in every kernel %v after the write", c.writeProbe(probeLeaseN(4), ec.Members).Round(time.Millisecond))

	for _, p := range pingers {
		if !running(p.cmd.Process.Pid) {
			t.Errorf("%s: the pings ended before the last fault did; raise the count", p.what)
		}
	}
	for _, p := range pingers {
		sent, lost := p.wait(t)
		t.Logf("%s at 100/s through the faults: %d sent, %d lost", p.what, sent, lost)
		if lost != 0 {
			t.Errorf("%s lost %d of %d pings", p.what, lost, sent)
		}
	}
	unreachable, total := health.check(t)
	t.Logf("healthz and readyz polled every 0.5 s on every host: %d answers, all 200; %d readyz answers said the store was unreachable", total, unreachable)
	for i, h := range c.Hosts {
		if ev := monitors[i].overlayEvents(); len(ev) > 0 {
			t.Errorf("%s: %d netlink events on flannel.1 during the faults besides the probe leases':\n%s", h.NS, len(ev), strings.Join(ev, "\n"))
		}
		if after := c.overlayState(h); !slices.Equal(after, before[h.NS]) {
			t.Errorf("%s: flannel.1's routes, neighbours, FDB or device changed:\nbefore:\n%s\nafter:\n%s", h.NS,
				strings.Join(before[h.NS], "\n"), strings.Join(after, "\n"))
		}
		if done, err := h.Exited(); done {
			t.Errorf("%s: flanneld exited: %v", h.NS, err)
		}
		b, _ := os.ReadFile(h.LogFile)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "level=ERROR") {
				t.Errorf("%s: flanneld logged an error: %s", h.NS, l)
			}
		}
	}
}

// running reports whether process pid has not exited (a zombie not yet
// waited for has).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state …: comm may hold spaces, the state follows its ')'.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}
