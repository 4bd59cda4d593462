package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/tools/lab"
)

// The bad-input flood (issue 15): thousands of malformed peer leases of
// every kind in etcd among good ones. Our flanneld must not crash, must
// install every good peer, must skip and count every bad one by reason,
// show them by raw key, log a bounded number of lines, and stay within a
// bounded amount of memory.

const (
	floodNetConf = `{"Network":"10.64.0.0/10","SubnetLen":24,"Backend":{"Type":"vxlan"}}`
	floodPrefix  = "/coreos.com/network/subnets/"
	floodHealthz = "9108"
)

// floodKV is one lease written, and the reason h1 must skip it for ("" for
// a good one). expiring leases are written with a TTL, the others as
// reservations.
type floodKV struct {
	key, value, reason string
	expiring           bool
}

// floodLeases plans the leases: good ones first (goods of them), then
// bad ones, 10,000 in all, of every kind, for a cluster where h1 holds
// own and has public address ownIP. avoid are subnets not to write.
func floodLeases(goods int, own netip.Prefix, ownIP netip.Addr, avoid map[netip.Prefix]bool) (good, bad []floodKV) {
	vx := func(pub string, mac string) string {
		return `{"PublicIP":"` + pub + `","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"` + mac + `"}}`
	}
	key := func(p netip.Prefix) string { return strings.Replace(p.String(), "/", "-", 1) }
	// Subnets of the network (10.64.0.0/10) handed out in turn, skipping
	// the hosts'.
	next := 0
	subnet := func() netip.Prefix {
		for {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(70 + next/256), byte(next), 0}), 24)
			next++
			if !avoid[p] {
				return p
			}
		}
	}
	mac := func(i int) string {
		return fmt.Sprintf("0e:57:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
	}
	pub := func(i int) string {
		return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}).String()
	}
	for i := range goods {
		good = append(good, floodKV{key: floodPrefix + key(subnet()), value: vx(pub(i), mac(i))})
	}
	add := func(n int, reason string, kv func(i int) (string, string)) {
		for i := range n {
			k, v := kv(i)
			bad = append(bad, floodKV{key: floodPrefix + k, value: v, reason: reason})
		}
	}
	n := 100000                                       // distinct MACs and addresses for the bad ones
	add(500, "decode", func(i int) (string, string) { // wrong family: an IPv6 PublicIP
		return key(subnet()), vx(fmt.Sprintf("fd00::%x", i+1), mac(n+i))
	})
	add(1000, "bad_key", func(i int) (string, string) { return fmt.Sprintf("junk-%d", i), `{}` })
	add(10, "bad_key", func(i int) (string, string) { return strings.Repeat("k", 100<<10) + strconv.Itoa(i), `{}` })
	// Keys below the directory, or a second spelling of a key, naming the
	// subnets of a real lease: some name h1's own, with another PublicIP,
	// which a store that trusted the last path element would take for h1's
	// lease taken over.
	add(20, "bad_key", func(i int) (string, string) { return fmt.Sprintf("x%d/%s", i, key(own)), vx(pub(n+i), mac(n+i)) })
	add(480, "bad_key", func(i int) (string, string) { return fmt.Sprintf("x/%s", key(subnet())), vx(pub(n+i), mac(n+i)) })
	add(200, "bad_key", func(int) (string, string) { return key(subnet()) + "&fc00:0::-64", vx("100.64.9.9", mac(7)) })
	add(1500, "backend_data", func(i int) (string, string) {
		m := []string{"zz:zz:zz:zz:zz:zz", "", "01:00:5e:00:00:01", "00:00:00:00:00:00", "0e:57:00:00:00:00:00:01"}[i%5]
		return key(subnet()), vx(pub(2*n+i), m)
	})
	add(1000, "backend_type", func(i int) (string, string) {
		v := vx(pub(3*n+i), mac(3*n+i))
		return key(subnet()), strings.Replace(v, `"vxlan"`, `"`+[]string{"host-gw", "udp", "", "wireguard"}[i%4]+`"`, 1)
	})
	add(1000, "outside_network", func(i int) (string, string) {
		return key(netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 8), byte(i), 0}), 24)), vx(pub(4*n+i), mac(4*n+i))
	})
	// Overlapping ours: every prefix in the upper half of h1's subnet
	// (255 of them), and every prefix of the network containing it (/10 to
	// /23) whose first address is not h1's. (h2 installs these as peers,
	// as upstream would: one holding h1's first address would take over
	// h2's neighbour entry for h1, and one in the lower half h1's gateway:
	// peer leases overlapping each other are not detected.)
	var over []netip.Prefix
	base := own.Addr().As4()
	for bits := 25; bits <= 32; bits++ {
		for off := 0; off < 128; off += 1 << (32 - bits) {
			a := base
			a[3] = byte(128 + off)
			over = append(over, netip.PrefixFrom(netip.AddrFrom4(a), bits))
		}
	}
	for bits := 10; bits <= 23; bits++ {
		if p := netip.PrefixFrom(own.Addr(), bits).Masked(); p.Addr() != own.Addr() {
			over = append(over, p)
		}
	}
	add(len(over), "overlaps_own_subnet", func(i int) (string, string) { return key(over[i]), vx(pub(5*n+i), mac(5*n+i)) })
	add(500, "no_enabled_family", func(i int) (string, string) {
		return "0.0.0.0-0&" + key(netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfc, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)}), 64)),
			`{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"` + mac(6*n+i) + `"}}`
	})
	// Stale leases of h1's: its public address with other subnets. With a
	// TTL, as a host writes them: a reservation for h1's address is the
	// operator's and would be the lease h1 takes at its next start.
	add(500, "own_public_ip", func(i int) (string, string) { return key(subnet()), vx(ownIP.String(), mac(7*n+i)) })
	for i := len(bad) - 500; i < len(bad); i++ {
		bad[i].expiring = true
	}
	// Absurd sizes: values of 1 MiB (etcd takes up to 1.5 MiB a request)
	// and of 100 KiB, a valid lease padded with spaces.
	add(10, "value_too_large", func(i int) (string, string) {
		return key(subnet()), vx(pub(8*n+i), mac(8*n+i)) + strings.Repeat(" ", 1<<20-200)
	})
	add(190, "value_too_large", func(i int) (string, string) {
		return key(subnet()), vx(pub(8*n+100+i), mac(8*n+100+i)) + strings.Repeat(" ", 100<<10)
	})
	// The rest: values that are not JSON, or not a lease.
	rest := 10000 - len(bad)
	add(rest, "decode", func(i int) (string, string) {
		return key(subnet()), []string{`{"PublicIP":`, `not json`, `[]`, `{"PublicIP":"300.1.1.1"}`, `"x"`}[i%5]
	})
	return good, bad
}

// writeFlood writes kvs in transactions of at most 100 operations and
// about 1 MiB (etcd refuses more than 128 operations, or 1.5 MiB, a
// request).
func writeFlood(t *testing.T, cli *clientv3.Client, kvs []floodKV) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	grant, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	var ops []clientv3.Op
	size := 0
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("write %d leases: %v", len(ops), err)
		}
		ops, size = ops[:0], 0
	}
	for _, kv := range kvs {
		if len(ops) == 100 || size+len(kv.key)+len(kv.value) > 1<<20+1024 {
			flush()
		}
		var opts []clientv3.OpOption
		if kv.expiring {
			opts = append(opts, clientv3.WithLease(grant.ID))
		}
		ops = append(ops, clientv3.OpPut(kv.key, kv.value, opts...))
		size += len(kv.key) + len(kv.value)
	}
	flush()
}

// mix interleaves good into bad: one good lease every len(bad)/len(good).
func mix(good, bad []floodKV) []floodKV {
	out := make([]floodKV, 0, len(good)+len(bad))
	every := max(len(bad)/max(len(good), 1), 1)
	for i, kv := range bad {
		if i%every == 0 && len(good) > 0 {
			out = append(out, good[0])
			good = good[1:]
		}
		out = append(out, kv)
	}
	return append(out, good...)
}

// procMem reads a process's resident set and its peak (KiB).
func procMem(pid int) (rss, hwm int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// labelled returns the sample of name with label reason.
func labelled(body, name, reason string) float64 {
	prefix := name + `{reason="` + reason + `"} `
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// memSample is what the flood test reports of the daemon's memory.
type memSample struct {
	rssKiB, hwmKiB int
	heapMiB        float64 // go_memstats_heap_inuse_bytes
}

func (m memSample) String() string {
	return fmt.Sprintf("RSS %.1f MiB, peak RSS %.1f MiB, Go heap in use %.1f MiB", float64(m.rssKiB)/1024, float64(m.hwmKiB)/1024, m.heapMiB)
}

func (c *cluster) memOf(h *lab.Host) memSample {
	c.t.Helper()
	rss, hwm := procMem(h.Pid())
	_, body := c.curl(h, "http://127.0.0.1:"+floodHealthz+"/metrics")
	return memSample{rss, hwm, metricValue(body, "go_memstats_heap_inuse_bytes") / (1 << 20)}
}

// routesOn counts the routes on dev in h.
func (c *cluster) routesOn(h *lab.Host, dev string) int {
	n := 0
	for _, line := range strings.Split(c.sh(h, "ip", "-o", "route", "show", "dev", dev), "\n") {
		if strings.TrimSpace(line) != "" {
			n++
		}
	}
	return n
}

func TestBadInputFlood(t *testing.T) {
	c := newCluster(t, "wtbif", 2, "198.18.80.0/24", floodNetConf)
	flags := []string{"--healthz-ip=127.0.0.1", "--healthz-port=" + floodHealthz}
	c.startAll(flags...)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	metrics := "http://127.0.0.1:" + floodHealthz + "/metrics"
	peersOf := func(h *lab.Host) float64 { _, b := c.curl(h, metrics); return metricValue(b, "flannel_peers") }
	// restart restarts h's flanneld and returns when it started.
	restart := func(h *lab.Host) time.Time {
		t.Helper()
		if err := c.Stop(h, syscall.SIGTERM); err != nil {
			t.Fatalf("%s: flanneld exit on SIGTERM: %v", h.NS, err)
		}
		start := time.Now()
		if err := c.Start(h, flags...); err != nil {
			t.Fatal(err)
		}
		return start
	}
	sameSubnet := func(h *lab.Host) {
		t.Helper()
		if got := c.waitSubnet(h); got != c.subnets[h.Index] {
			t.Fatalf("%s: subnet changed across restart: %s -> %s", h.NS, c.subnets[h.Index], got)
		}
	}
	good, bad := floodLeases(200, c.subnets[0], h1.IP, map[netip.Prefix]bool{c.subnets[0]: true, c.subnets[1]: true})
	want := map[string]int{}
	for _, kv := range bad {
		want[kv.reason]++
	}
	t.Logf("flood: %d bad leases by reason %v, %d good", len(bad), want, len(good))

	// 1. A hundred good peers: the daemon's memory after a cold start among
	// them is the baseline.
	writeFlood(t, c.etcd, good[:100])
	waitFor(t, "h1 to install 101 peers", 30*time.Second, func() bool { return peersOf(h1) == 101 })
	restart(h1)
	waitFor(t, "h1 to install 101 peers after its restart", 30*time.Second, func() bool { return peersOf(h1) == 101 })
	sameSubnet(h1)
	time.Sleep(2 * time.Second)
	base := c.memOf(h1)
	t.Logf("h1 among 100 good leases (cold start): %s", base)

	// 2. The flood, with a hundred more good ones mixed in, through the
	// watch.
	logFrom := logSize(h1)
	start := time.Now()
	writeFlood(t, c.etcd, mix(good[100:], bad))
	wrote := time.Since(start)
	took := waitFor(t, "h1 to see the flood", 2*time.Minute, func() bool {
		_, b := c.curl(h1, metrics)
		return metricValue(b, "flannel_peers") == 201 && metricValue(b, "flannel_peer_leases_skipped_total") == float64(len(bad))
	})
	t.Logf("flood written in %v; h1 had every good peer installed and every bad lease counted %v after", wrote.Round(time.Millisecond), took.Round(time.Millisecond))
	c.checkFlood(h1, want, good, bad)
	b, _ := os.ReadFile(h1.LogFile)
	warned := strings.Count(string(b[logFrom:]), "skipping peer lease")
	t.Logf("h1 logged %d 'skipping peer lease' lines for %d bad leases", warned, len(bad))
	if warned > 20*len(want) {
		t.Errorf("h1 logged %d skipped leases, want at most 20 per reason (%d)", warned, 20*len(want))
	}
	time.Sleep(2 * time.Second)
	afterWatch := c.memOf(h1)
	t.Logf("h1 after the flood through the watch: %s", afterWatch)

	// 3. A cold start among them all.
	// (h1's own lease is not among the 500 stale ones holding its
	// address: Acquire prefers the one holding subnet.env's subnet.)
	started := restart(h1)
	waitFor(t, "h1 to see the flood after its restart", 2*time.Minute, func() bool {
		_, b := c.curl(h1, metrics)
		return metricValue(b, "flannel_peers") == 201 && metricValue(b, "flannel_peer_leases_skipped_total") == float64(len(bad))
	})
	t.Logf("cold start among %d leases: every good peer installed and every bad one counted %v after the start",
		len(good)+len(bad)+2, time.Since(started).Round(time.Millisecond))
	sameSubnet(h1)
	c.checkFlood(h1, want, good, bad)
	time.Sleep(2 * time.Second)
	cold := c.memOf(h1)
	t.Logf("h1 after a cold start among the flood: %s", cold)
	// Bounded: what the daemon keeps of 10,000 bad leases is a hash and a
	// reason each. The peak holds the start's two listings of the whole
	// store (~30 MiB of junk values here, each in gRPC's buffer and
	// decoded), which the daemon hands back after its first pass.
	if d := cold.heapMiB - base.heapMiB; d > 32 {
		t.Errorf("Go heap in use after a cold start among the flood: %.1f MiB more than among the good leases alone", d)
	}
	if d := float64(cold.rssKiB-base.rssKiB) / 1024; d > 64 {
		t.Errorf("RSS after a cold start among the flood: %.1f MiB more than among the good leases alone", d)
	}

	// No daemon crashed; the overlay between the two hosts still works.
	for _, h := range c.Hosts {
		if done, err := h.Exited(); done {
			t.Errorf("%s: flanneld exited: %v", h.NS, err)
		}
		if b, _ := os.ReadFile(h.LogFile); strings.Contains(string(b), "panic") {
			t.Errorf("%s: flanneld log mentions a panic", h.NS)
		}
	}
	if n := c.routesOn(h2, "flannel.1"); n < 201 {
		t.Errorf("h2: %d routes on flannel.1, want the 200 good peers and h1 at least", n)
	}
	if err := c.pingUntil(h1, netip.Addr{}, c.subnets[1].Addr(), 10*time.Second); err != nil {
		t.Error(err)
	}
	if err := c.pingUntil(h2, netip.Addr{}, c.subnets[0].Addr(), 10*time.Second); err != nil {
		t.Error(err)
	}
}

// checkFlood checks h's view of the flood: the good peers in the kernel,
// the metric per reason, and `weft status --json` (counts, and example
// keys that are raw keys written, with the reason they were written for).
func (c *cluster) checkFlood(h *lab.Host, want map[string]int, good, bad []floodKV) {
	t := c.t
	t.Helper()
	if n := c.routesOn(h, "flannel.1"); n != len(good)+1 {
		t.Errorf("%s: %d routes on flannel.1, want %d (the good peers and the other host)", h.NS, n, len(good)+1)
	}
	fdb := strings.Count(c.sh(h, "bridge", "fdb", "show", "dev", "flannel.1"), " dst ")
	if fdb != len(good)+1 {
		t.Errorf("%s: %d FDB entries on flannel.1, want %d", h.NS, fdb, len(good)+1)
	}
	_, body := c.curl(h, "http://127.0.0.1:"+floodHealthz+"/metrics")
	for reason, n := range want {
		if got := labelled(body, "flannel_peer_leases_skipped_total", reason); got != float64(n) {
			t.Errorf("%s: flannel_peer_leases_skipped_total{reason=%q} = %v, want %d", h.NS, reason, got, n)
		}
		if got := labelled(body, "flannel_peer_leases_skipped", reason); got != float64(n) {
			t.Errorf("%s: flannel_peer_leases_skipped{reason=%q} = %v, want %d", h.NS, reason, got, n)
		}
	}
	out, err := c.Exec(context.Background(), h, weftBin, "status", "--json") // the host's status socket
	if err != nil {
		t.Fatalf("weft status: %v\n%.2000s", err, out)
	}
	var st struct {
		Daemon struct {
			Skipped  []struct{ Key, Reason string }
			ByReason map[string]int `json:"skippedByReason"`
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("weft status --json: %v\n%.2000s", err, out)
	}
	for reason, n := range want {
		if st.Daemon.ByReason[reason] != n {
			t.Errorf("%s: weft status counts %d skipped for %s, want %d", h.NS, st.Daemon.ByReason[reason], reason, n)
		}
	}
	written := make(map[string]string, len(bad))
	for _, kv := range bad {
		written[kv.key] = kv.reason
	}
	shown := map[string]int{}
	for _, s := range st.Daemon.Skipped {
		shown[s.Reason]++
		if i := strings.Index(s.Key, "…("); i >= 0 {
			if !strings.HasPrefix(s.Key, floodPrefix+"kkkk") || s.Reason != "bad_key" {
				t.Errorf("%s: shortened key %.80q shown for %s", h.NS, s.Key, s.Reason)
			}
			continue
		}
		if r, ok := written[s.Key]; !ok || r != s.Reason {
			t.Errorf("%s: weft status shows %q skipped for %s; written: %v, for %q", h.NS, s.Key, s.Reason, ok, r)
		}
	}
	for reason, n := range shown {
		if n > 20 {
			t.Errorf("%s: weft status shows %d keys for %s, want at most 20", h.NS, n, reason)
		}
	}
	if len(shown) != len(want) {
		t.Errorf("%s: weft status shows keys for %d reasons, want %d", h.NS, len(shown), len(want))
	}
}
