package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Crashes (issue 15, scenario 3): flanneld SIGKILLed in the middle of
// installing a burst of peers, the store changing while it is down, then
// restarted: the kernel ends exactly as the store says, nothing left over
// from before the crash and nothing twice. The subnet.env side of crashes
// is in subnetenv_crash_test.go and subnetdir_test.go.

const crashPeers = 5000

// crashPeer is a peer lease the crash test writes.
type crashPeer struct {
	subnet netip.Prefix
	pub    netip.Addr
	mac    string
}

func (p crashPeer) key() string {
	return floodPrefix + strings.Replace(p.subnet.String(), "/", "-", 1)
}

func (p crashPeer) value() string {
	return `{"PublicIP":"` + p.pub.String() + `","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"` + p.mac + `"}}`
}

func crashMAC(i int) string {
	return fmt.Sprintf("0e:5c:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
}

func crashPub(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// crashPeerSet plans n peers in 10.70.0.0/15 and up, avoiding avoid; ids
// from first on make their MACs and addresses unique.
func crashPeerSet(n, first int, avoid map[netip.Prefix]bool) []crashPeer {
	var out []crashPeer
	for i := first; len(out) < n; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(70 + i/256), byte(i), 0}), 24)
		if avoid[p] {
			continue
		}
		out = append(out, crashPeer{subnet: p, pub: crashPub(i), mac: crashMAC(i)})
	}
	return out
}

// storeTxn applies ops in transactions of 100 (etcd's limit is 128).
func storeTxn(t *testing.T, cli *clientv3.Client, ops []clientv3.Op) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if _, err := cli.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			t.Fatalf("store transaction of %d: %v", n, err)
		}
		ops = ops[n:]
	}
}

// vxlanKernel is what a host's kernel holds on flannel.1, one sorted line
// per object: peer routes, nexthops, permanent neighbours, FDB entries.
type vxlanKernel struct {
	routes, nexthops, neighs, fdb []string
}

func (k vxlanKernel) counts() string {
	return fmt.Sprintf("%d routes, %d nexthops, %d neighbours, %d FDB entries", len(k.routes), len(k.nexthops), len(k.neighs), len(k.fdb))
}

// ipLines runs ip(8) or bridge(8) with -n ns (no mount namespace games:
// fast enough to poll) and returns its non-empty output lines.
func ipLines(ns, cmd string, args ...string) ([]string, error) {
	out, err := exec.Command(cmd, append([]string{"-n", ns}, args...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s -n %s %s: %w", cmd, ns, strings.Join(args, " "), err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

// readVXLAN reads flannel.1's objects in ns, normalised to the fields the
// comparison needs: "route DST via GW", "nexthop via GW", "neigh IP MAC",
// "fdb MAC dst IP".
func readVXLAN(ns string) (vxlanKernel, error) {
	var k vxlanKernel
	routes, err := ipLines(ns, "ip", "-4", "-o", "route", "show", "dev", "flannel.1")
	if err != nil {
		return k, err
	}
	for _, l := range routes {
		f := strings.Fields(l)
		if i := slices.Index(f, "via"); i > 0 {
			k.routes = append(k.routes, "route "+f[0]+" via "+f[i+1])
		}
	}
	nhs, err := ipLines(ns, "ip", "-4", "nexthop", "show", "dev", "flannel.1")
	if err != nil {
		return k, err
	}
	for _, l := range nhs {
		f := strings.Fields(l)
		if i := slices.Index(f, "via"); i > 0 {
			k.nexthops = append(k.nexthops, "nexthop via "+f[i+1])
		}
	}
	neighs, err := ipLines(ns, "ip", "-4", "neigh", "show", "dev", "flannel.1", "nud", "permanent")
	if err != nil {
		return k, err
	}
	for _, l := range neighs {
		f := strings.Fields(l)
		if i := slices.Index(f, "lladdr"); i > 0 {
			k.neighs = append(k.neighs, "neigh "+f[0]+" "+f[i+1])
		}
	}
	fdb, err := ipLines(ns, "bridge", "fdb", "show", "dev", "flannel.1")
	if err != nil {
		return k, err
	}
	for _, l := range fdb {
		f := strings.Fields(l)
		if i := slices.Index(f, "dst"); i > 0 {
			k.fdb = append(k.fdb, "fdb "+f[0]+" dst "+f[i+1])
		}
	}
	for _, s := range [][]string{k.routes, k.nexthops, k.neighs, k.fdb} {
		slices.Sort(s)
	}
	return k, nil
}

// wantVXLAN is what a vxlan host holding own should have on flannel.1 for
// the leases in the store now, read back from etcd.
func (c *cluster) wantVXLAN(own netip.Prefix) vxlanKernel {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, floodPrefix, clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	var k vxlanKernel
	for _, kv := range resp.Kvs {
		subnet, err := netip.ParsePrefix(strings.Replace(strings.TrimPrefix(string(kv.Key), floodPrefix), "-", "/", 1))
		if err != nil {
			c.t.Fatalf("key %s: %v", kv.Key, err)
		}
		if subnet == own {
			continue
		}
		var v struct {
			PublicIP    string
			BackendData struct{ VtepMAC string }
		}
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			c.t.Fatalf("%s: %v", kv.Key, err)
		}
		gw := subnet.Addr().String()
		k.routes = append(k.routes, "route "+subnet.String()+" via "+gw)
		k.nexthops = append(k.nexthops, "nexthop via "+gw)
		k.neighs = append(k.neighs, "neigh "+gw+" "+v.BackendData.VtepMAC)
		k.fdb = append(k.fdb, "fdb "+v.BackendData.VtepMAC+" dst "+v.PublicIP)
	}
	for _, s := range [][]string{k.routes, k.nexthops, k.neighs, k.fdb} {
		slices.Sort(s)
	}
	return k
}

// diffVXLAN describes how got differs from want: missing and extra lines
// per kind (an extra line equal to a wanted one is a duplicate), at most
// a few of each.
func diffVXLAN(got, want vxlanKernel) string {
	var b strings.Builder
	kinds := []struct {
		name      string
		got, want []string
	}{{"routes", got.routes, want.routes}, {"nexthops", got.nexthops, want.nexthops}, {"neighbours", got.neighs, want.neighs}, {"FDB", got.fdb, want.fdb}}
	for _, k := range kinds {
		left := map[string]int{}
		for _, l := range k.want {
			left[l]++
		}
		var extra, missing []string
		for _, l := range k.got {
			if left[l] > 0 {
				left[l]--
			} else {
				extra = append(extra, l)
			}
		}
		for _, l := range k.want {
			if left[l] > 0 {
				left[l]--
				missing = append(missing, l)
			}
		}
		if len(extra)+len(missing) > 0 {
			fmt.Fprintf(&b, "%s: %d missing %q, %d extra or duplicate %q; ", k.name, len(missing), missing[:min(3, len(missing))], len(extra), extra[:min(3, len(extra))])
		}
	}
	return b.String()
}

// duplicates counts keys held twice: two FDB entries for one MAC, two
// neighbours for one address, two routes for one destination, two
// nexthops to one gateway.
func duplicates(k vxlanKernel) int {
	n := 0
	for _, lines := range [][]string{k.routes, k.nexthops, k.neighs, k.fdb} {
		seen := map[string]bool{}
		for _, l := range lines {
			f := strings.Fields(l)
			key := f[0] + " " + f[1] // kind and destination, address or MAC
			if f[0] == "nexthop" {
				key = f[0] + " " + f[2] // gateway
			}
			if seen[key] {
				n++
			}
			seen[key] = true
		}
	}
	return n
}

// TestCrashMidBurst: host 1's flanneld is SIGKILLed while it installs a
// burst of 5,000 peers; while it is down some peers leave, some change
// their VTEP MAC or public address, some arrive; restarted, it converges
// to exactly the store's peers: every route, nexthop, permanent neighbour
// and FDB entry on flannel.1 is a current peer's, one each, none of a
// deleted peer or of a changed peer's old MAC or address. It keeps its
// subnet.
func TestCrashMidBurst(t *testing.T) {
	c := newCluster(t, "wtck1", 1, "198.18.90.0/24", floodNetConf)
	c.startAll()
	h := c.Hosts[0]
	own := c.subnets[0]
	avoid := map[netip.Prefix]bool{own: true}
	peers := crashPeerSet(crashPeers, 0, avoid)

	// Watch the kernel; kill flanneld once a quarter of the routes are in (the first 1,000 written, which the changes below touch).
	type killed struct {
		at     time.Time
		routes int
	}
	killc := make(chan killed, 1)
	go func() {
		pid := h.Pid()
		deadline := time.Now().Add(90 * time.Second)
		for time.Now().Before(deadline) {
			routes, err := ipLines(h.NS, "ip", "-4", "-o", "route", "show", "dev", "flannel.1")
			if err == nil && len(routes) >= crashPeers/4 {
				syscall.Kill(pid, syscall.SIGKILL)
				killc <- killed{time.Now(), len(routes)}
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		killc <- killed{}
	}()
	kvs := make([]floodKV, len(peers))
	for i, p := range peers {
		kvs[i] = floodKV{key: p.key(), value: p.value()}
	}
	start := time.Now()
	writeFlood(t, c.etcd, kvs)
	wrote := time.Since(start)
	k := <-killc
	if k.at.IsZero() {
		t.Fatalf("flanneld never installed %d routes", crashPeers/4)
	}
	err := c.Stop(h, syscall.SIGKILL)
	if ws, ok := err.(*exec.ExitError); !ok || !ws.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("flanneld ended with %v, want killed", err)
	}
	atKill, err := readVXLAN(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d leases written in %v; flanneld killed %v after the first write, with %d routes seen; in the kernel then: %s",
		len(peers), wrote.Round(time.Millisecond), k.at.Sub(start).Round(time.Millisecond), k.routes, atKill.counts())
	if n := len(atKill.routes); n >= crashPeers*9/10 {
		t.Fatalf("killed too late: %d of %d routes in already", n, crashPeers)
	}

	// While it is down: 500 peers leave, 250 change VTEP MAC, 250 change
	// public address (all among the first written: installed when it was
	// killed, so their old objects are in the kernel), 100 of the last
	// written change MAC (likely not installed), 500 new ones arrive.
	var ops []clientv3.Op
	for _, p := range peers[:500] {
		ops = append(ops, clientv3.OpDelete(p.key()))
	}
	changed := map[int]crashPeer{}
	for i := 500; i < 750; i++ {
		changed[i] = crashPeer{peers[i].subnet, peers[i].pub, crashMAC(1<<20 + i)}
	}
	for i := 750; i < 1000; i++ {
		changed[i] = crashPeer{peers[i].subnet, crashPub(1<<18 + i), peers[i].mac}
	}
	for i := crashPeers - 100; i < crashPeers; i++ {
		changed[i] = crashPeer{peers[i].subnet, peers[i].pub, crashMAC(1<<21 + i)}
	}
	for _, p := range changed {
		ops = append(ops, clientv3.OpPut(p.key(), p.value()))
	}
	for _, p := range peers {
		avoid[p.subnet] = true
	}
	for _, p := range crashPeerSet(500, crashPeers+1000, avoid) {
		ops = append(ops, clientv3.OpPut(p.key(), p.value()))
	}
	storeTxn(t, c.etcd, ops)
	want := c.wantVXLAN(own)
	if len(want.routes) != crashPeers {
		t.Fatalf("the store holds %d peers, want %d", len(want.routes), crashPeers)
	}
	stale := 0
	for _, l := range atKill.fdb {
		if !slices.Contains(want.fdb, l) {
			stale++
		}
	}
	t.Logf("while down: 500 peers deleted, 600 changed, 500 added; %d of the FDB entries installed at the kill are now stale", stale)

	restarted := time.Now()
	if err := c.Start(h); err != nil {
		t.Fatal(err)
	}
	var got vxlanKernel
	for {
		got, err = readVXLAN(h.NS)
		if err == nil && diffVXLAN(got, want) == "" {
			break
		}
		if done, err := h.Exited(); done {
			t.Fatalf("flanneld exited: %v", err)
		}
		// Within the first full pass, not the next resync (10 s).
		if time.Since(restarted) > 8*time.Second {
			t.Fatalf("not converged 8 s after the restart: %s", diffVXLAN(got, want))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(restarted)
	t.Logf("converged %v after the restart: %s, %d duplicates", took.Round(time.Millisecond), got.counts(), duplicates(got))
	if n := duplicates(got); n != 0 {
		t.Errorf("%d duplicate kernel objects", n)
	}
	if s := c.waitSubnet(h); s != own {
		t.Errorf("subnet changed across the crash: %s -> %s", own, s)
	}
	// Still exact a moment later: nothing else arrives from the start.
	time.Sleep(time.Second)
	if got, err := readVXLAN(h.NS); err != nil || diffVXLAN(got, want) != "" {
		t.Errorf("a second after convergence: %v %s", err, diffVXLAN(got, want))
	}
}
