package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/tools/lab"
)

// A 3-member etcd cluster losing its leader and a member (docs/RELIABILITY.md,
// "3-member etcd cluster: leader killed, member partitioned"): every
// member a real etcd process in a namespace of its own (lab.EtcdCluster),
// killed with SIGKILL and partitioned from its peers with nftables.

const etcdPrefix = "/coreos.com/network"

// newMemberCluster is newCluster on a 3-member etcd cluster.
func newMemberCluster(t *testing.T, name string, hosts int, underlay, netconf string) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	c, err := lab.New(ctx, lab.Options{
		Name: name, Hosts: hosts, Underlay: netip.MustParsePrefix(underlay), Dir: dir,
		Flanneld: flanneldBin, EtcdMembers: 3, EtcdMemberCommand: []string{weftBin, "demo", "etcd-member"},
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
			for _, m := range c.EtcdCluster.Members {
				b, _ := os.ReadFile(m.LogFile)
				t.Logf("---- etcd member %s log (last 4 KiB) ----\n%s", m.Name, lastBytes(b, 4096))
			}
		}
		c.Close()
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdCluster.LocalURLs(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	if _, err := cli.Put(ctx, etcdPrefix+"/config", netconf); err != nil {
		t.Fatal(err)
	}
	return &cluster{Cluster: c, t: t, etcd: cli, subnets: make([]netip.Prefix, hosts), subnets6: make([]netip.Prefix, hosts)}
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// leader waits for a leader that a majority names, other than not (nil:
// any), and returns it with how long that took.
func (c *cluster) leader(not *lab.EtcdMember, within time.Duration) (*lab.EtcdMember, time.Duration) {
	c.t.Helper()
	var l *lab.EtcdMember
	took := waitFor(c.t, "an etcd leader", within, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		m, err := c.EtcdCluster.Leader(ctx)
		if err != nil || m == not {
			return false
		}
		l = m
		return true
	})
	return l, took
}

// acquirer is one racing host: its own store (its own etcd client) and
// what it ended with.
type acquirer struct {
	ip      netip.Addr
	lease   lease.Lease
	full    error // the network-full error, if that is how it ended
	err     error // anything else it ended with (a failure)
	retries int   // Acquire calls that failed and were retried
	errs    []string
	took    time.Duration
}

// acquire calls Acquire the way flanneld does (ownlease.go): each call
// bounded, retried after a failure other than a full network, here after
// 100 ms (the daemon waits longer), until deadline.
func (a *acquirer) acquire(ctx context.Context, st *etcdstore.Store, req lease.Request) {
	start := time.Now()
	defer func() { a.took = time.Since(start) }()
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := st.Acquire(actx, req)
		cancel()
		switch {
		case err == nil:
			a.lease = l
			return
		case errors.Is(err, lease.ErrNoFreeSubnet):
			a.full = err
			return
		case ctx.Err() != nil:
			a.err = fmt.Errorf("gave up after %d retries: %w", a.retries, err)
			return
		}
		a.retries++
		a.errs = append(a.errs, err.Error())
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestEtcdClusterAcquireRace: 200 hosts, each with its own etcd client
// (endpoints: all three members), race in waves for the 127 subnets of a
// /17 while the leader is SIGKILLed and restarted, then the new leader is
// partitioned from its peers and healed. No subnet may be leased twice,
// every acquirer ends with a lease that etcd holds for it or a clear
// "network full", and none hangs.
func TestEtcdClusterAcquireRace(t *testing.T) {
	const (
		netconf = `{"Network":"10.85.0.0/17","SubnetLen":24,"Backend":{"Type":"vxlan"}}`
		hosts   = 200
		waves   = 10
		every   = time.Second
	)
	c := newMemberCluster(t, "wtec1", 0, "198.18.85.0/24", netconf)
	ec := c.EtcdCluster
	n, err := config.ParseNetwork([]byte(netconf))
	if err != nil {
		t.Fatal(err)
	}
	// Subnets in [SubnetMin, SubnetMax].
	u32 := func(a netip.Addr) uint32 {
		b := a.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	capacity := int((u32(n.SubnetMax)-u32(n.SubnetMin))>>(32-n.SubnetLen)) + 1
	counts := &msgCounter{n: map[string]int{}}
	log := slog.New(counts)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	acq := make([]*acquirer, hosts)
	stores := make([]*etcdstore.Store, hosts)
	for i := range acq {
		acq[i] = &acquirer{ip: netip.AddrFrom4([4]byte{100, 85, byte(i / 250), byte(1 + i%250)})}
		st, err := etcdstore.New(ctx, log, etcdstore.Config{Endpoints: ec.LocalURLs(), Prefix: etcdPrefix})
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = st
		t.Cleanup(func() { st.Close() })
	}

	// Waves of acquirers every second; each fault lands 50 ms into a wave,
	// while its requests are in flight. The network fills during the
	// partition.
	var faults []string
	note := func(start time.Time, format string, args ...any) {
		faults = append(faults, fmt.Sprintf("%5.2fs ", time.Since(start).Seconds())+fmt.Sprintf(format, args...))
	}
	first, _ := c.leader(nil, 10*time.Second)
	start := time.Now()
	faultDone := make(chan struct{})
	go func() {
		defer close(faultDone)
		time.Sleep(time.Until(start.Add(every + 50*time.Millisecond)))
		ec.Kill(first)
		note(start, "leader %s killed (SIGKILL)", first.Name)
		second, took := c.leader(first, 15*time.Second)
		note(start, "new leader %s, named %v after the kill", second.Name, took.Round(time.Millisecond))
		time.Sleep(time.Until(start.Add(3*every + 500*time.Millisecond)))
		if err := ec.Start(ctx, first); err != nil {
			t.Errorf("restart %s: %v", first.Name, err)
			return
		}
		note(start, "%s restarted on its data, serving", first.Name)
		time.Sleep(time.Until(start.Add(6*every + 50*time.Millisecond)))
		if err := ec.Partition(ctx, second); err != nil {
			t.Error(err)
			return
		}
		note(start, "leader %s partitioned from its peers (its clients still reach it)", second.Name)
		third, took := c.leader(second, 15*time.Second)
		note(start, "new leader %s, named %v after the partition", third.Name, took.Round(time.Millisecond))
		time.Sleep(time.Until(start.Add(10 * every)))
		if err := ec.Heal(ctx, second); err != nil {
			t.Error(err)
			return
		}
		note(start, "%s healed", second.Name)
	}()

	var wg sync.WaitGroup
	for w := 0; w < waves; w++ {
		time.Sleep(time.Until(start.Add(time.Duration(w) * every)))
		for i := w * hosts / waves; i < (w+1)*hosts/waves; i++ {
			a, st := acq[i], stores[i]
			req := lease.Request{Network: n, TTL: time.Hour, Attrs: lease.Attrs{
				PublicIP: a.ip, BackendType: "vxlan",
				BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:00:00:85:%02x:%02x"}`, i/256, i%256)),
			}}
			wg.Add(1)
			go func() { defer wg.Done(); a.acquire(ctx, st, req) }()
		}
	}
	wg.Wait()
	raceTook := time.Since(start)
	<-faultDone
	for _, f := range faults {
		t.Log("fault:", f)
	}

	// What the acquirers got.
	var leased, full, failed, retries int
	var slowest time.Duration
	bySubnet := map[netip.Prefix]int{}
	errKinds := map[string]int{}
	for i, a := range acq {
		retries += a.retries
		slowest = max(slowest, a.took)
		for _, e := range a.errs {
			errKinds[errKind(e)]++
		}
		switch {
		case a.err != nil:
			failed++
			t.Errorf("acquirer %d (%s) ended with neither a lease nor network full: %v", i, a.ip, a.err)
		case a.full != nil:
			full++
			if !strings.Contains(a.full.Error(), "network full") {
				t.Errorf("acquirer %d: network full reads %q, want it to say so", i, a.full)
			}
		default:
			leased++
			if j, dup := bySubnet[a.lease.Subnet]; dup {
				t.Errorf("DUPLICATE: acquirers %d (%s) and %d (%s) both returned %s", j, acq[j].ip, i, a.ip, a.lease.Subnet)
			}
			bySubnet[a.lease.Subnet] = i
		}
	}
	// What etcd holds, read once the cluster is whole again.
	rctx, rcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer rcancel()
	resp, err := c.etcd.Get(rctx, etcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[netip.Addr]int{}
	for i, a := range acq {
		byIP[a.ip] = i
	}
	var stored []netip.Prefix
	holder := map[netip.Prefix]netip.Addr{}
	for _, kv := range resp.Kvs {
		l, err := lease.Decode(string(kv.Key), kv.Value)
		if err != nil {
			t.Errorf("stored lease %s does not decode: %v", kv.Key, err)
			continue
		}
		for _, p := range stored {
			if p.Overlaps(l.Subnet) {
				t.Errorf("DUPLICATE in etcd: %s overlaps %s", l.Subnet, p)
			}
		}
		stored = append(stored, l.Subnet)
		holder[l.Subnet] = l.Attrs.PublicIP
		i, ok := byIP[l.Attrs.PublicIP]
		switch {
		case !ok:
			t.Errorf("stored lease %s holds %s, no acquirer's address", kv.Key, l.Attrs.PublicIP)
		case acq[i].full != nil || acq[i].err != nil:
			t.Errorf("stored lease %s holds acquirer %d's %s, which ended without a lease (%v%v)", kv.Key, i, l.Attrs.PublicIP, acq[i].full, acq[i].err)
		case acq[i].lease.Subnet != l.Subnet:
			t.Errorf("stored lease %s holds acquirer %d's %s, which returned %s", kv.Key, i, l.Attrs.PublicIP, acq[i].lease.Subnet)
		}
	}
	for i, a := range acq {
		if a.full == nil && a.err == nil && holder[a.lease.Subnet] != a.ip {
			t.Errorf("acquirer %d (%s) returned %s, which etcd holds for %v", i, a.ip, a.lease.Subnet, holder[a.lease.Subnet])
		}
	}
	if len(stored) != leased {
		t.Errorf("etcd holds %d leases, acquirers returned %d", len(stored), leased)
	}
	if leased != min(capacity, hosts) {
		t.Errorf("%d leases of a network of %d subnets for %d hosts, want %d", leased, capacity, hosts, min(capacity, hosts))
	}
	var kinds []string
	for k, v := range errKinds {
		kinds = append(kinds, fmt.Sprintf("%d× %s", v, k))
	}
	sort.Strings(kinds)
	var exampleFull string
	for _, a := range acq {
		if a.full != nil {
			exampleFull = a.full.Error()
			break
		}
	}
	t.Logf("%d acquirers in %d waves, %v apart, for %d subnets: %d leased, %d network full, %d failed; all ended %v after the first wave (slowest acquirer %v); %d retried Acquire calls: %s",
		hosts, waves, every, capacity, leased, full, failed, raceTook.Round(time.Millisecond), slowest.Round(time.Millisecond), retries, strings.Join(kinds, "; "))
	t.Logf("inside Acquire: %s", counts)
	t.Logf("etcd holds %d leases, 0 overlapping, each the one its host returned; network full reads: %q", len(stored), exampleFull)
}

// errKind shortens an Acquire error for the tally.
func errKind(e string) string {
	for _, k := range []string{"lost 10 compare-and-swap", "no leader", "request timed out", "leader changed", "proposal dropped",
		"deadline exceeded", "Unavailable", "connection", "EOF"} {
		if strings.Contains(e, k) {
			return k
		}
	}
	if len(e) > 120 {
		e = e[:120]
	}
	return e
}

// msgCounter is a slog.Handler counting records by message, at every
// level: what the stores did inside Acquire (lost races, re-plans).
type msgCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *msgCounter) Enabled(context.Context, slog.Level) bool { return true }
func (m *msgCounter) Handle(_ context.Context, r slog.Record) error {
	m.mu.Lock()
	m.n[r.Message]++
	m.mu.Unlock()
	return nil
}
func (m *msgCounter) WithAttrs([]slog.Attr) slog.Handler { return m }
func (m *msgCounter) WithGroup(string) slog.Handler      { return m }

func (m *msgCounter) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k, v := range m.n {
		out = append(out, fmt.Sprintf("%d× %q", v, k))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}
