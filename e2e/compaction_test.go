package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/tools/lab"
)

// Compaction while watching (docs/RELIABILITY.md): a daemon whose watch
// resumes from a revision etcd has compacted away must list again and end
// with exactly what etcd holds — nothing missed, nothing that existed only
// inside the gap, nothing stale — and so must daemons whose watches race a
// compactor under continuous churn. Checked by diffing every host's kernel
// (read through netlink) and `weft status` against etcd.

const (
	compactHealthz = 9195
	compactPeers   = 300
	subnetsPrefix  = "/coreos.com/network/subnets/"
)

// compactNetwork is the IPv4 network of both runs.
var compactNetwork = netip.MustParsePrefix("10.96.0.0/12")

// compactNow compacts etcd's history up to its current revision and
// returns that revision.
func (c *cluster) compactNow(physical bool) int64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, "/coreos.com/network/config")
	if err != nil {
		c.t.Fatal(err)
	}
	var opts []clientv3.CompactOption
	if physical {
		opts = append(opts, clientv3.WithCompactPhysical())
	}
	if _, err := c.etcd.Compact(ctx, resp.Header.Revision, opts...); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		c.t.Fatal(err)
	}
	return resp.Header.Revision
}

// restarts reads h's flannel_store_watch_restarts_total for reason.
func (c *cluster) restarts(h *lab.Host, reason string) float64 {
	c.t.Helper()
	code, body := c.curl(h, fmt.Sprintf("http://127.0.0.1:%d/metrics", compactHealthz))
	if code != 200 {
		c.t.Fatalf("%s: /metrics %d", h.NS, code)
	}
	return labelled(body, "flannel_store_watch_restarts_total", reason)
}

// checkStatus waits (the status may be up to 500 ms behind the daemon)
// for `weft status --json` on every host to list exactly the peers etcd
// holds, with no drift.
func (c *cluster) checkStatus() {
	c.t.Helper()
	want, _ := c.etcdVXLANPeers()
	for _, h := range c.Hosts {
		var d []string
		deadline := time.Now().Add(5 * time.Second)
		for d = c.statusPeersDiff(h, want); len(d) > 0 && time.Now().Before(deadline); d = c.statusPeersDiff(h, want) {
			time.Sleep(100 * time.Millisecond)
		}
		if len(d) > 0 {
			c.t.Errorf("%s: weft status differs from etcd: %s", h.NS, summary(d))
		}
	}
}

func TestEtcdCompactionWhileWatching(t *testing.T) {
	for _, tc := range []struct {
		name, lab, underlay, underlay6, netconf string
		dual                                    bool
	}{
		{"vxlan", "wtcp1", "198.18.95.0/24", "", `{"Network":"10.96.0.0/12","Backend":{"Type":"vxlan"}}`, false},
		{"dualstack", "wtcp2", "198.18.96.0/24", "fd00:cb96::/64",
			`{"Network":"10.96.0.0/12","EnableIPv6":true,"IPv6Network":"fc00:96::/48","Backend":{"Type":"vxlan"}}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClusterV6(t, tc.lab, 3, tc.underlay, tc.underlay6, tc.netconf)
			// A resync period longer than the test, so that no full pass can
			// mend what the watch or a re-list got wrong before it is checked.
			c.startAll("--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", compactHealthz), "--resync-period=5m")
			if tc.dual {
				for i, s := range c.subnets6 {
					if !s.IsValid() {
						t.Fatalf("host %d: no IPv6 subnet", i)
					}
				}
			}
			w := newPeerWriter(c, tc.dual)
			w.seed(t, compactPeers)
			for _, h := range c.Hosts {
				c.waitConverged(h, 30*time.Second)
			}
			k, err := readVXLANKernel(c.Hosts[0].NS)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d fake peers and %d hosts in every kernel (%s: %d routes, %d neighbours, %d FDB entries)",
				compactPeers, len(c.Hosts), c.Hosts[0].NS, len(k.routes), len(k.neighs), len(k.fdb))
			compactionGap(t, c, w)
			compactionRace(t, c, w)
		})
	}
}

// compactionGap cuts host 1 off from etcd, churns every kind of change,
// compacts (physically) and defragments, and heals: host 1's watch
// resumes from a compacted revision and must list again.
func compactionGap(t *testing.T, c *cluster, w *peerWriter) {
	h1 := c.Hosts[0]
	routes := watchRoutes(t, h1.NS)
	compacted0 := c.restarts(h1, "compacted")
	cutAt := time.Now()
	heal := c.resetFromEtcd(h1)
	waitFor(t, h1.NS+" to see etcd gone", 10*time.Second, func() bool {
		_, body := c.curl(h1, fmt.Sprintf("http://127.0.0.1:%d/readyz", compactHealthz))
		return strings.Contains(body, "store unreachable since")
	})
	_, rev0 := c.etcdVXLANPeers()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	keys := append([]netip.Prefix(nil), w.keys...)
	sort.Slice(keys, func(i, j int) bool { return keys[i].Addr().Less(keys[j].Addr()) })
	var added, deleted, phantoms []netip.Prefix
	for _, p := range keys[0:40] { // deleted
		must(w.del(ctx, p))
		deleted = append(deleted, p)
	}
	for i, p := range keys[40:80] { // modified: a new MAC, or a new PublicIP
		v, n := w.live[p], w.peer()
		if i%2 == 0 {
			v.mac, v.mac6 = n.mac, n.mac6
		} else {
			v.publicIP, v.publicIP6 = n.publicIP, n.publicIP6
		}
		must(w.put(ctx, p, v))
	}
	for _, p := range keys[80:110] { // deleted and created again, with new data
		must(w.del(ctx, p))
		must(w.put(ctx, p, w.peer()))
	}
	for _, p := range keys[110:130] { // deleted and created again, the same
		v := w.live[p]
		must(w.del(ctx, p))
		must(w.put(ctx, p, v))
	}
	for _, p := range keys[130:150] { // modified, then restored
		v := w.live[p]
		must(w.put(ctx, p, w.peer()))
		must(w.put(ctx, p, v))
	}
	for range 40 { // new
		p := w.fresh()
		must(w.put(ctx, p, w.peer()))
		added = append(added, p)
	}
	for i := range 40 { // phantoms: born and gone inside the gap
		p := w.fresh()
		must(w.put(ctx, p, w.peer()))
		if i%4 == 0 {
			must(w.put(ctx, p, w.peer()))
		}
		must(w.del(ctx, p))
		phantoms = append(phantoms, p)
	}
	for range 10 { // new, gone, new again with other data
		p := w.fresh()
		must(w.put(ctx, p, w.peer()))
		must(w.del(ctx, p))
		must(w.put(ctx, p, w.peer()))
		added = append(added, p)
	}
	lastWrite := time.Now()
	_, rev1 := c.etcdVXLANPeers()
	gap := rev1 - rev0
	t.Logf("%s cut off; %d changes written in %v after the cut (revisions %d → %d)", h1.NS, gap, lastWrite.Sub(cutAt).Round(time.Millisecond), rev0, rev1)
	for _, h := range c.Hosts[1:] {
		at := c.waitConverged(h, 5*time.Second)
		t.Logf("%s (watching throughout) matched etcd %v after the last write", h.NS, at.Sub(lastWrite).Round(time.Millisecond))
	}

	compactAt := c.compactNow(true)
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if _, err := c.etcd.Defragment(dctx, c.Etcd.ClientURL); err != nil {
		t.Fatal(err)
	}
	if compactAt < rev1 {
		t.Fatalf("compacted at %d, before the last change %d", compactAt, rev1)
	}
	healAt := time.Now()
	heal()
	at := c.waitConverged(h1, 5*time.Second)
	t.Logf("etcd compacted at revision %d and defragmented; cut healed: %s matched etcd %v later (%d changes in the gap)",
		compactAt, h1.NS, at.Sub(healAt).Round(time.Millisecond), gap)

	waitFor(t, h1.NS+" to count the relist", 5*time.Second, func() bool { return c.restarts(h1, "compacted") > compacted0 })
	if n := c.restarts(h1, "compacted") - compacted0; n != 1 {
		t.Errorf("%s: flannel_store_watch_restarts_total{reason=\"compacted\"} grew by %v, want 1", h1.NS, n)
	}
	if b, _ := os.ReadFile(h1.LogFile); !strings.Contains(string(b), "lease history compacted, listing again") {
		t.Errorf("%s: no 'lease history compacted, listing again' in its log", h1.NS)
	}

	// Host 1's routes moved for the added and deleted peers only, once
	// each: the phantoms never reached it, and the peers whose subnets
	// stayed (modified, recreated, restored) kept their routes.
	want := map[netip.Prefix]string{}
	for _, p := range added {
		want[p] = "added"
	}
	for _, p := range deleted {
		want[p] = "deleted"
	}
	isPhantom := map[netip.Prefix]bool{}
	for _, p := range phantoms {
		isPhantom[p] = true
	}
	got := map[netip.Prefix][]string{}
	for _, e := range routes.since(cutAt) {
		if !compactNetwork.Contains(e.dst.Addr()) {
			continue
		}
		if isPhantom[e.dst] {
			t.Errorf("%s: phantom %s reached the kernel (route added %v)", h1.NS, e.dst, e.add)
		}
		got[e.dst] = append(got[e.dst], map[bool]string{true: "added", false: "deleted"}[e.add])
	}
	for p, what := range want {
		if g := got[p]; len(g) != 1 || g[0] != what {
			t.Errorf("%s: route %s: %v, want %s once", h1.NS, p, g, what)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: route %s changed (%v), though its peer was %s", h1.NS, p, g, map[bool]string{true: "a phantom", false: "kept"}[isPhantom[p]])
		}
	}
	c.checkStatus()
}

// compactionRace churns continuously while etcd is compacted at its
// current revision every 20 ms; hosts 2 and 3 watch throughout, host 1's
// connection to etcd is destroyed every ~200 ms, so its watch resumes
// from revisions the compactor has usually just removed, and its listings
// race the writer.
func compactionRace(t *testing.T, c *cluster, w *peerWriter) {
	const churnFor = 6 * time.Second
	compacted0 := make([]float64, len(c.Hosts))
	for i, h := range c.Hosts {
		compacted0[i] = c.restarts(h, "compacted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan struct{})
	var wg sync.WaitGroup
	var compactions, kills int
	var bgErr error
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if bgErr == nil {
			bgErr = err
		}
	}
	wg.Add(2)
	go func() { // the compactor
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			resp, err := c.etcd.Get(ctx, "/coreos.com/network/config")
			if err == nil {
				_, err = c.etcd.Compact(ctx, resp.Header.Revision)
			}
			if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
				fail(fmt.Errorf("compact: %w", err))
				return
			}
			compactions++
		}
	}()
	go func() { // host 1's connection breaker
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(150*time.Millisecond + rand.N(100*time.Millisecond)):
			}
			if err := c.killEtcdConns(c.Hosts[0]); err != nil {
				fail(err)
				return
			}
			kills++
		}
	}()

	r := rand.New(rand.NewPCG(15, 2))
	ops0 := w.ops
	start := time.Now()
	var err error
	for time.Since(start) < churnFor && err == nil {
		pick := func() netip.Prefix { return w.keys[r.IntN(len(w.keys))] }
		op := r.IntN(10)
		switch {
		case len(w.keys) < 200:
			op = 0
		case len(w.keys) > 400:
			op = 3
		}
		switch op {
		case 0, 1, 2: // a new peer, half the time at a subnet deleted before
			p := w.fresh()
			if len(w.gone) > 0 && r.IntN(2) == 0 {
				i := r.IntN(len(w.gone))
				p = w.gone[i]
				w.gone = append(w.gone[:i], w.gone[i+1:]...)
				if _, ok := w.live[p]; ok {
					continue
				}
			}
			err = w.put(ctx, p, w.peer())
		case 3, 4:
			err = w.del(ctx, pick())
		case 5: // a new MAC and PublicIP
			err = w.put(ctx, pick(), w.peer())
		case 6: // a new MAC, or a new PublicIP
			p := pick()
			v, n := w.live[p], w.peer()
			if r.IntN(2) == 0 {
				v.mac, v.mac6 = n.mac, n.mac6
			} else {
				v.publicIP, v.publicIP6 = n.publicIP, n.publicIP6
			}
			err = w.put(ctx, p, v)
		case 7: // deleted and created again with other data
			p := pick()
			if err = w.del(ctx, p); err == nil {
				err = w.put(ctx, p, w.peer())
			}
		case 8: // a phantom
			p := w.fresh()
			if err = w.put(ctx, p, w.peer()); err == nil {
				err = w.del(ctx, p)
			}
		case 9: // deleted and created again, the same
			p := pick()
			v := w.live[p]
			if err = w.del(ctx, p); err == nil {
				err = w.put(ctx, p, v)
			}
		}
	}
	lastWrite := time.Now()
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if bgErr != nil {
		t.Fatal(bgErr)
	}
	c.compactNow(false)
	var per []string
	for _, h := range c.Hosts {
		at := c.waitConverged(h, 5*time.Second)
		per = append(per, fmt.Sprintf("%s %v", h.NS, at.Sub(lastWrite).Round(time.Millisecond)))
	}
	relists := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		n := c.restarts(h, "compacted") - compacted0[i]
		relists[i] = fmt.Sprintf("%s %v", h.NS, n)
		if i == 0 && n == 0 {
			t.Errorf("%s: its watch never resumed into compacted history (%d connections destroyed, %d compactions): the race was not run", h.NS, kills, compactions)
		}
	}
	t.Logf("%d changes in %v (%d peers at the end), %d compactions, %s's connection destroyed %d times; relists after compaction: %s; every kernel matched etcd after the last write: %s",
		w.ops-ops0, lastWrite.Sub(start).Round(time.Millisecond), len(w.live), compactions, c.Hosts[0].NS, kills, strings.Join(relists, ", "), strings.Join(per, ", "))
	c.checkStatus()
}
