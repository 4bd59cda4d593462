package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/tools/lab"
)

// Outages of the lease store (docs/RELIABILITY.md, "etcd outage" and
// "kube-apiserver restart"): pods keep talking, the daemons stay alive and
// ready and say since when the store is gone, a lease written once it is
// back reaches the kernel at once, and a lease that lapsed meanwhile is
// taken back with the same subnet.

// Lease TTLs the outage tests give flanneld (WEFT_TEST_LEASE_TTL), renewed
// at half the TTL: outageTTL is outlasted by a 60 s outage but outlasts
// etcd's graceful stop (7 s with watches open: meanwhile etcd still
// expires leases, and no client can renew); lapseTTL lets a cut-off
// host's lease expire in etcd within seconds.
const (
	outageTTL = "20s"
	lapseTTL  = "5s"
)

// healthLog polls /healthz and /readyz on every host while it runs.
type healthLog struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples []healthSample
}

type healthSample struct {
	at              time.Time
	host            string
	healthz, readyz int
	readyBody       string
}

func (c *cluster) pollHealth(base string, every time.Duration) *healthLog {
	l := &healthLog{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			for _, h := range c.Hosts {
				hz, _ := c.curl(h, base+"/healthz")
				rz, body := c.curl(h, base+"/readyz")
				l.mu.Lock()
				l.samples = append(l.samples, healthSample{time.Now(), h.NS, hz, rz, body})
				l.mu.Unlock()
			}
			select {
			case <-l.stop:
				return
			case <-t.C:
			}
		}
	}()
	return l
}

// check stops the poller and fails the test for any /healthz or /readyz
// answer other than 200; it returns how many /readyz answers said the
// store was unreachable, of how many.
func (l *healthLog) check(t *testing.T) (unreachable, total int) {
	t.Helper()
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.samples {
		if s.healthz != 200 || s.readyz != 200 {
			t.Errorf("%s at %s: healthz %d, readyz %d %q", s.host, s.at.Format("15:04:05.000"), s.healthz, s.readyz, s.readyBody)
		}
		if strings.Contains(s.readyBody, "store unreachable since") {
			unreachable++
		}
	}
	return unreachable, len(l.samples)
}

// routeAppears reports when a route to dst is first added in namespace ns,
// from a netlink subscription opened now.
func routeAppears(t *testing.T, ns string, dst netip.Prefix) <-chan time.Time {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("netns %s: %v", ns, err)
	}
	defer h.Close()
	updates := make(chan netlink.RouteUpdate, 1024)
	done := make(chan struct{})
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatalf("route subscription in %s: %v", ns, err)
	}
	t.Cleanup(func() { close(done) })
	out := make(chan time.Time, 1)
	go func() {
		sent := false
		for u := range updates { // drained until the subscription closes
			if !sent && u.Type == unix.RTM_NEWROUTE && u.Dst != nil && u.Dst.String() == dst.String() {
				out <- time.Now()
				sent = true
			}
		}
	}()
	return out
}

// statusJSON is what the outage tests read of `weft status --json`.
type statusJSON struct {
	Daemon struct {
		Lease struct {
			Subnet, State string
		}
		Store struct {
			Reachable        bool
			UnreachableSince time.Time
		}
	}
	Drift struct {
		Desired        int
		Missing, Extra []string
	}
	Readyz string
}

// weftStatus runs `weft status --json` on h, which reads the daemon's
// status socket.
func (c *cluster) weftStatus(h *lab.Host) statusJSON {
	c.t.Helper()
	out, _ := c.Exec(context.Background(), h, weftBin, "status", "--json")
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("%s: weft status --json: %v\n%s", h.NS, err, out)
	}
	return st
}

// vxlanPeerValue is the etcd value of a vxlan host that exists only in
// the store: enough for every daemon to program a route to its subnet.
func vxlanPeerValue(publicIP string) string {
	return `{"PublicIP":"` + publicIP + `","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:99:99"}}`
}

// routeTimes waits for each channel's time, and fails the test for one
// that does not come within d.
func routeTimes(t *testing.T, c *cluster, seen []<-chan time.Time, d time.Duration) []time.Time {
	t.Helper()
	out := make([]time.Time, len(seen))
	deadline := time.After(d)
	for i, ch := range seen {
		select {
		case out[i] = <-ch:
		case <-deadline:
			t.Fatalf("%s: no route within %v", c.Hosts[i].NS, d)
		}
	}
	return out
}

func latest(ts []time.Time) time.Time {
	var m time.Time
	for _, x := range ts {
		if x.After(m) {
			m = x
		}
	}
	return m
}

// TestEtcdOutage stops the cluster's etcd for 60 s while pods on three
// hosts ping each other at 100/s (leases with a 20 s TTL, so each host's
// expiry passes during the outage), then starts it again on the same data
// and port and writes a new host's lease at once.
func TestEtcdOutage(t *testing.T) {
	const port = 9170
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	c := newCluster(t, "wtou1", 3, "198.18.70.0/24", `{"Network":"10.70.0.0/16","Backend":{"Type":"vxlan"}}`)
	for _, h := range c.Hosts {
		h.Env = []string{"WEFT_TEST_LEASE_TTL=" + outageTTL}
	}
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
	envs := map[string][]byte{}
	for _, h := range c.Hosts {
		waitFor(t, h.NS+" readyz 200", 10*time.Second, func() bool { code, _ := c.curl(h, base+"/readyz"); return code == 200 })
		envs[h.NS], _ = os.ReadFile(h.SubnetFile)
	}

	const outage = 60 * time.Second
	count := int((outage + 15*time.Second) / (10 * time.Millisecond))
	var pingers []*pinger
	for i, p := range pods {
		dst := pods[(i+1)%len(pods)]
		pingers = append(pingers, startPing(t, p.NS+" -> "+dst.NS, p.NS, netip.Addr{}, dst.IPv4, count))
	}
	health := c.pollHealth(base, time.Second)
	newPeer := netip.MustParsePrefix("10.70.200.0/24")
	seen := make([]<-chan time.Time, len(c.Hosts))
	for i, h := range c.Hosts {
		seen[i] = routeAppears(t, h.NS, newPeer)
	}
	time.Sleep(2 * time.Second)

	stopAt := time.Now()
	c.Etcd.Stop()
	t.Logf("etcd stopped (its graceful stop took %v)", time.Since(stopAt).Round(time.Millisecond))
	for _, h := range c.Hosts {
		waitFor(t, h.NS+" readyz to say the store is unreachable", 30*time.Second, func() bool {
			code, body := c.curl(h, base+"/readyz")
			return code == 200 && strings.HasPrefix(body, "ok\nstore unreachable since ")
		})
	}
	// Past every lease's expiry (20 s TTL): kept, overdue, nothing torn down.
	time.Sleep(time.Until(stopAt.Add(outage * 2 / 3)))
	for _, h := range c.Hosts {
		st := c.weftStatus(h)
		since := st.Daemon.Store.UnreachableSince
		if st.Daemon.Store.Reachable || since.Before(stopAt.Add(-time.Second)) || since.After(time.Now()) {
			t.Errorf("%s: weft status store = %+v during the outage (began %s), want unreachable since then", h.NS, st.Daemon.Store, stopAt.Format(time.RFC3339Nano))
		}
		if st.Daemon.Lease.State != "renewal overdue" || !strings.HasPrefix(st.Readyz, "ok\nstore unreachable since") {
			t.Errorf("%s: weft status lease state %q, readyz %q; want renewal overdue, ok with the store's note", h.NS, st.Daemon.Lease.State, st.Readyz)
		}
		if st.Drift.Desired == 0 || len(st.Drift.Missing)+len(st.Drift.Extra) != 0 {
			t.Errorf("%s: weft status drift %+v during the outage, want the kernel in sync", h.NS, st.Drift)
		}
		if st.Daemon.Lease.Subnet != c.subnets[h.Index].String() {
			t.Errorf("%s: lease %s during the outage, want %s", h.NS, st.Daemon.Lease.Subnet, c.subnets[h.Index])
		}
	}
	st := c.weftStatus(c.Hosts[0])
	t.Logf("%s during the outage: store %+v, lease %q, readyz %q", c.Hosts[0].NS, st.Daemon.Store, st.Daemon.Lease.State, st.Readyz)
	time.Sleep(time.Until(stopAt.Add(outage)))

	startAt := time.Now()
	if err := c.Etcd.Start(); err != nil {
		t.Fatalf("start etcd again: %v", err)
	}
	answered := time.Now()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/coreos.com/network/subnets/10.70.200.0-24", vxlanPeerValue("198.18.70.99"), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	routes := routeTimes(t, c, seen, 10*time.Second)
	var per []string
	for i, h := range c.Hosts {
		per = append(per, fmt.Sprintf("%s %v", h.NS, routes[i].Sub(answered).Round(time.Millisecond)))
	}
	took := latest(routes).Sub(answered)
	t.Logf("etcd back after %v down (start took %v); a lease written %v after it answered was in every kernel %v after it answered (%v after the write): %s",
		startAt.Sub(stopAt).Round(time.Millisecond), answered.Sub(startAt).Round(time.Millisecond),
		written.Sub(answered).Round(time.Millisecond), took.Round(time.Millisecond), latest(routes).Sub(written).Round(time.Millisecond),
		strings.Join(per, ", "))
	if took > 200*time.Millisecond {
		t.Errorf("a lease written once etcd answered again reached the last kernel %v later, want ≤ 200 ms", took)
	}

	for _, h := range c.Hosts {
		waitFor(t, h.NS+" to hold its lease again, store reachable", 30*time.Second, func() bool {
			st := c.weftStatus(h)
			return st.Daemon.Store.Reachable && st.Daemon.Lease.State == "held" && st.Readyz == "ok"
		})
	}
	for _, p := range pingers {
		sent, lost := p.wait(t)
		t.Logf("%s at 100/s across the outage: %d sent, %d lost", p.what, sent, lost)
		if lost != 0 {
			t.Errorf("%s lost %d of %d pings across the outage", p.what, lost, sent)
		}
	}
	unreachable, total := health.check(t)
	t.Logf("healthz and readyz polled every second on every host: %d answers, all 200; %d readyz answers said the store was unreachable", total, unreachable)
	for _, h := range c.Hosts {
		if done, err := h.Exited(); done {
			t.Errorf("%s: flanneld exited: %v", h.NS, err)
		}
		if env, _ := os.ReadFile(h.SubnetFile); string(env) != string(envs[h.NS]) {
			t.Errorf("%s: subnet.env changed across the outage:\n%s\n---\n%s", h.NS, envs[h.NS], env)
		}
	}
}

// cutFromEtcd drops h's packets to etcd (the hub's port 2379), as a
// partition that leaves etcd up for everyone else; it returns the heal.
func (c *cluster) cutFromEtcd(h *lab.Host) (heal func()) {
	c.t.Helper()
	table := h.NS + "-cut"
	nft := func(args ...string) error {
		out, err := exec.Command("ip", append([]string{"netns", "exec", h.NS, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft %v in %s: %v: %s", args, h.NS, err, out)
		}
		return nil
	}
	for _, args := range [][]string{
		{"add", "table", "inet", table},
		{"add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }"},
		{"add", "rule", "inet", table, "out", "tcp", "dport", "2379", "drop"},
	} {
		if err := nft(args...); err != nil {
			c.t.Fatal(err)
		}
	}
	return func() {
		if err := nft("delete", "table", "inet", table); err != nil {
			c.t.Fatal(err)
		}
	}
}

// TestEtcdLeaseLapse cuts one host off from etcd (etcd stays up for the
// other) until its lease expires in etcd, then heals the cut: the host
// keeps its dataplane throughout, and takes the same subnet back. Then the
// same, but another host leases the subnet meanwhile: the host says so
// (readyz 503 naming the holder, flannel_lease_conflict 1) and keeps
// running, and takes the subnet back once that lease goes.
func TestEtcdLeaseLapse(t *testing.T) {
	const port = 9171
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	c := newCluster(t, "wtou2", 2, "198.18.71.0/24", `{"Network":"10.71.0.0/16","Backend":{"Type":"vxlan"}}`)
	for _, h := range c.Hosts {
		h.Env = []string{"WEFT_TEST_LEASE_TTL=" + lapseTTL}
	}
	c.startAll("--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", port))
	h1, h2 := c.Hosts[0], c.Hosts[1]
	mine := c.subnets[h1.Index]
	key := "/coreos.com/network/subnets/" + strings.Replace(mine.String(), "/", "-", 1)
	env, _ := os.ReadFile(h1.SubnetFile)
	routeOn := func(h *lab.Host, p netip.Prefix) bool {
		return strings.Contains(c.sh(h, "ip", "route", "show", p.String()), "flannel.1")
	}
	waitFor(t, h2.NS+" route to "+mine.String(), 15*time.Second, func() bool { return routeOn(h2, mine) })
	holder := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := c.etcd.Get(ctx, key)
		if err != nil || len(resp.Kvs) == 0 {
			return ""
		}
		var v struct{ PublicIP string }
		_ = json.Unmarshal(resp.Kvs[0].Value, &v)
		return v.PublicIP
	}
	// lapse cuts h1 off until etcd has expired its lease (h2 dropped the
	// route), checking that h1 kept its dataplane meanwhile.
	lapse := func() (heal func()) {
		heal = c.cutFromEtcd(h1)
		took := waitFor(t, h2.NS+" to drop the route to "+mine.String()+" (h1's lease expired)", 30*time.Second, func() bool { return !routeOn(h2, mine) })
		t.Logf("%s cut off from etcd: its lease expired, %s dropped the route %v after the cut", h1.NS, h2.NS, took.Round(time.Millisecond))
		if got := holder(); got != "" {
			t.Fatalf("%s still held by %s after the route went", key, got)
		}
		if !routeOn(h1, c.subnets[h2.Index]) {
			t.Errorf("%s dropped its route to %s while cut off", h1.NS, c.subnets[h2.Index])
		}
		if code, body := c.curl(h1, base+"/readyz"); code != 200 {
			t.Errorf("%s readyz while cut off = %d %q, want 200", h1.NS, code, body)
		}
		return heal
	}

	t.Run("reclaimed", func(t *testing.T) {
		heal := lapse()
		heal()
		healAt := time.Now()
		back := waitFor(t, key+" back in etcd for "+h1.IP.String(), 30*time.Second, func() bool { return holder() == h1.IP.String() })
		waitFor(t, h2.NS+" route to "+mine.String()+" back", 10*time.Second, func() bool { return routeOn(h2, mine) })
		t.Logf("cut healed: %s reclaimed %s %v later; %s had its route back %v after the heal",
			h1.NS, mine, back.Round(time.Millisecond), h2.NS, time.Since(healAt).Round(time.Millisecond))
		if done, err := h1.Exited(); done {
			t.Fatalf("%s: flanneld exited: %v", h1.NS, err)
		}
		if got, _ := os.ReadFile(h1.SubnetFile); string(got) != string(env) {
			t.Errorf("%s: subnet.env changed:\n%s\n---\n%s", h1.NS, env, got)
		}
		_, body := c.curl(h1, base+"/metrics")
		if v := metricValue(body, `flannel_lease_reclaims_total{result="ok"}`); v < 1 {
			t.Errorf("flannel_lease_reclaims_total{result=\"ok\"} = %v, want ≥ 1", v)
		}
		waitFor(t, h1.NS+" ready, lease held", 15*time.Second, func() bool {
			st := c.weftStatus(h1)
			return st.Daemon.Lease.State == "held" && st.Readyz == "ok"
		})
	})

	t.Run("taken meanwhile", func(t *testing.T) {
		heal := lapse()
		// Another host leases the subnet while h1 is away.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g, err := c.etcd.Grant(ctx, 3600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.etcd.Put(ctx, key, vxlanPeerValue("198.18.71.99"), clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		heal()
		took := waitFor(t, h1.NS+" readyz to name the holder", 30*time.Second, func() bool {
			code, body := c.curl(h1, base+"/readyz")
			return code == 503 && strings.Contains(body, "held by host 198.18.71.99")
		})
		_, body := c.curl(h1, base+"/readyz")
		t.Logf("%s after the heal, its subnet taken: readyz 503 after %v: %q", h1.NS, took.Round(time.Millisecond), strings.TrimSpace(body))
		_, metrics := c.curl(h1, base+"/metrics")
		if v := metricValue(metrics, "flannel_lease_conflict"); v != 1 {
			t.Errorf("flannel_lease_conflict = %v, want 1", v)
		}
		if st := c.weftStatus(h1); !strings.HasPrefix(st.Daemon.Lease.State, "lost: ") {
			t.Errorf("weft status lease state %q, want lost: …", st.Daemon.Lease.State)
		}
		if done, err := h1.Exited(); done {
			t.Fatalf("%s: flanneld exited: %v", h1.NS, err)
		}
		if !routeOn(h1, c.subnets[h2.Index]) {
			t.Errorf("%s dropped its route to %s", h1.NS, c.subnets[h2.Index])
		}
		if got := holder(); got != "198.18.71.99" {
			t.Errorf("%s held by %q, want the other host's 198.18.71.99 left alone", key, got)
		}

		// Recovery without a restart: the other host's lease goes.
		if _, err := c.etcd.Revoke(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
		took = waitFor(t, h1.NS+" to take its subnet back", 30*time.Second, func() bool {
			code, _ := c.curl(h1, base+"/readyz")
			return code == 200 && holder() == h1.IP.String()
		})
		t.Logf("the other lease revoked: %s held %s again and was ready %v later", h1.NS, mine, took.Round(time.Millisecond))
		_, metrics = c.curl(h1, base+"/metrics")
		if v := metricValue(metrics, "flannel_lease_conflict"); v != 0 {
			t.Errorf("flannel_lease_conflict = %v after recovery, want 0", v)
		}
		waitFor(t, h2.NS+" route to "+mine.String()+" back", 10*time.Second, func() bool { return routeOn(h2, mine) })
	})
}
