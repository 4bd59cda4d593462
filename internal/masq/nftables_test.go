package masq

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/knftables"
)

// countingNFT counts the transactions an Interface runs and can fail them,
// or fail nft --check (to play a kernel without fully-random masquerade).
type countingNFT struct {
	knftables.Interface
	runs, checks int
	runErr       error
	checkErr     error
}

func (c *countingNFT) Run(ctx context.Context, tx *knftables.Transaction) error {
	c.runs++
	if c.runErr != nil {
		return c.runErr
	}
	return c.Interface.Run(ctx, tx)
}

func (c *countingNFT) Check(ctx context.Context, tx *knftables.Transaction) error {
	c.checks++
	if c.checkErr != nil {
		return c.checkErr
	}
	return c.Interface.Check(ctx, tx)
}

type nftHarness struct {
	t      *testing.T
	v4, v6 *knftables.Fake
	c4, c6 *countingNFT
	m      *NFTables
}

func newNFTHarness(t *testing.T) *nftHarness {
	h := &nftHarness{
		t:  t,
		v4: knftables.NewFake(knftables.IPv4Family, nftTableV4),
		v6: knftables.NewFake(knftables.IPv6Family, nftTableV6),
	}
	h.c4, h.c6 = &countingNFT{Interface: h.v4}, &countingNFT{Interface: h.v6}
	h.m = NewNFTables(testLog(t), h.c4, h.c6)
	return h
}

func (h *nftHarness) dump() string { return h.v4.Dump() + h.v6.Dump() }
func (h *nftHarness) runs() int    { return h.c4.runs + h.c6.runs }

func (h *nftHarness) sync(cfg Config) int {
	h.t.Helper()
	n, err := h.m.Sync(context.Background(), Plan(cfg))
	if err != nil {
		h.t.Fatalf("Sync: %v", err)
	}
	return n
}

// steady checks that a Sync with nothing changed repairs nothing and
// writes nothing.
func (h *nftHarness) steady(cfg Config) {
	h.t.Helper()
	before := h.runs()
	if n := h.sync(cfg); n != 0 {
		h.t.Errorf("Sync with nothing changed repaired %d, want 0", n)
	}
	if h.runs() != before {
		h.t.Errorf("Sync with nothing changed ran %d transactions", h.runs()-before)
	}
}

// change runs a transaction on the fake behind the manager's back.
func change(t *testing.T, fake *knftables.Fake, edit func(tx *knftables.Transaction)) {
	t.Helper()
	tx := fake.NewTransaction()
	edit(tx)
	if err := fake.Run(context.Background(), tx); err != nil {
		t.Fatalf("editing the fake: %v", err)
	}
}

func TestNFTablesGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			h := newNFTHarness(t)
			if n := h.sync(tc.cfg); n == 0 {
				t.Errorf("first Sync repaired nothing")
			}
			golden(t, "nftables/"+tc.name+".nft", h.dump())
			h.steady(tc.cfg)
		})
	}
}

func TestNFTablesRepair(t *testing.T) {
	cfg := goldenCases[1].cfg // dual stack
	handleOf := func(fake *knftables.Fake, chain string, i int) *int {
		return fake.Table.Chains[chain].Rules[i].Handle
	}
	for _, tc := range []struct {
		name string
		edit func(h *nftHarness, tx *knftables.Transaction)
		fake func(h *nftHarness) *knftables.Fake
		want int
	}{
		{"deleted rule", func(h *nftHarness, tx *knftables.Transaction) {
			tx.Delete(&knftables.Rule{Chain: nftPostrtg, Handle: handleOf(h.v4, nftPostrtg, 2)})
		}, (*nftHarness).fake4, 1},
		{"replaced rule", func(h *nftHarness, tx *knftables.Transaction) {
			tx.Replace(&knftables.Rule{Chain: nftPostrtg, Handle: handleOf(h.v6, nftPostrtg, 4), Rule: "masquerade"})
		}, (*nftHarness).fake6, 1},
		{"reordered rules", func(h *nftHarness, tx *knftables.Transaction) {
			r := *h.v4.Table.Chains[nftForward].Rules[1]
			tx.Delete(&knftables.Rule{Chain: nftForward, Handle: r.Handle})
			r.Handle, r.Index = nil, knftables.PtrTo(0)
			tx.Insert(&r)
		}, (*nftHarness).fake4, 1},
		{"deleted chain", func(h *nftHarness, tx *knftables.Transaction) {
			tx.Flush(&knftables.Chain{Name: nftForward})
			tx.Delete(&knftables.Chain{Name: nftForward})
		}, (*nftHarness).fake4, 1},
		{"deleted table", func(h *nftHarness, tx *knftables.Transaction) {
			tx.Delete(&knftables.Table{})
		}, (*nftHarness).fake6, 2},
		{"stray chain in our table", func(h *nftHarness, tx *knftables.Transaction) {
			tx.Add(&knftables.Chain{Name: "stray"})
			tx.Add(&knftables.Rule{Chain: "stray", Rule: "counter"})
		}, (*nftHarness).fake4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newNFTHarness(t)
			h.sync(cfg)
			want := h.dump()
			change(t, tc.fake(h), func(tx *knftables.Transaction) { tc.edit(h, tx) })
			if h.dump() == want {
				t.Fatal("the edit changed nothing")
			}
			if n := h.sync(cfg); n != tc.want {
				t.Errorf("Sync repaired %d, want %d", n, tc.want)
			}
			if diff := cmp.Diff(want, h.dump()); diff != "" {
				t.Errorf("after repair (-want +got):\n%s", diff)
			}
			h.steady(cfg)
		})
	}
}

func (h *nftHarness) fake4() *knftables.Fake { return h.v4 }
func (h *nftHarness) fake6() *knftables.Fake { return h.v6 }

// TestNFTablesFromUpstream starts from the table upstream flannel writes
// (no rule comments, its own mark match) and expects one rewrite.
func TestNFTablesFromUpstream(t *testing.T) {
	cfg := goldenCases[0].cfg
	fresh := newNFTHarness(t)
	fresh.sync(cfg)

	h := newNFTHarness(t)
	change(t, h.v4, func(tx *knftables.Transaction) {
		tx.Add(&knftables.Table{Comment: knftables.PtrTo("rules for flannel-ipv4")})
		tx.Add(&knftables.Chain{Name: nftPostrtg, Type: knftables.PtrTo(knftables.NATType),
			Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)})
		tx.Add(&knftables.Chain{Name: nftForward, Type: knftables.PtrTo(knftables.FilterType),
			Hook: knftables.PtrTo(knftables.ForwardHook), Priority: knftables.PtrTo(knftables.FilterPriority)})
		for _, r := range []string{
			"meta mark 0x4000 return",
			"ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
			"ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
			"ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
			"ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
			"ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
		} {
			tx.Add(&knftables.Rule{Chain: nftPostrtg, Rule: r})
		}
		tx.Add(&knftables.Rule{Chain: nftForward, Rule: "ip saddr 10.244.0.0/16 accept"})
		tx.Add(&knftables.Rule{Chain: nftForward, Rule: "ip daddr 10.244.0.0/16 accept"})
	})
	// Upstream also creates an empty IPv6 table on IPv4-only hosts.
	change(t, h.v6, func(tx *knftables.Transaction) { tx.Add(&knftables.Table{}) })

	if n := h.sync(cfg); n != 3 {
		t.Errorf("Sync over upstream's tables repaired %d, want 3 (two chains, the empty IPv6 table)", n)
	}
	// Table and chain comments are only set on creation (nft ignores them
	// on an existing object); everything else must match.
	if diff := cmp.Diff(objectCommentsOut(fresh.dump()), objectCommentsOut(h.dump())); diff != "" {
		t.Errorf("after Sync over upstream (-fresh +got):\n%s", diff)
	}
	h.steady(cfg)
}

var objectComment = regexp.MustCompile(`(?m)^(add (table|chain) .*?)comment "[^"]*" ; `)

// objectCommentsOut drops the comments of tables and chains from a dump.
func objectCommentsOut(dump string) string { return objectComment.ReplaceAllString(dump, "$1") }

func TestNFTablesChanges(t *testing.T) {
	h := newNFTHarness(t)
	dual := goldenCases[1].cfg
	h.sync(dual)

	// A new lease: no rule may mention the old subnet.
	moved := dual
	moved.Subnet = sub4New
	if n := h.sync(moved); n != 1 {
		t.Errorf("Sync after subnet change repaired %d, want 1 (postrtg)", n)
	}
	if strings.Contains(h.dump(), sub4.String()) {
		t.Errorf("old subnet %s still in the rules:\n%s", sub4, h.dump())
	}
	fresh := newNFTHarness(t)
	fresh.sync(moved)
	if diff := cmp.Diff(fresh.dump(), h.dump()); diff != "" {
		t.Errorf("after subnet change (-fresh +got):\n%s", diff)
	}

	// Masquerade off: the postrtg chains go, forward stays.
	noMasq := moved
	noMasq.Masquerade = false
	if n := h.sync(noMasq); n != 2 {
		t.Errorf("Sync with masquerade off repaired %d, want 2", n)
	}
	if d := h.dump(); strings.Contains(d, nftPostrtg) || !strings.Contains(d, nftForward) {
		t.Errorf("with masquerade off:\n%s", d)
	}

	// IPv6 off: its table goes.
	v4only := noMasq
	v4only.IPv6Network, v4only.IPv6Subnet = Config{}.IPv6Network, Config{}.IPv6Subnet
	if n := h.sync(v4only); n != 1 {
		t.Errorf("Sync with IPv6 off repaired %d, want 1", n)
	}
	if h.v6.Table != nil {
		t.Errorf("IPv6 table left:\n%s", h.v6.Dump())
	}
	h.steady(v4only)

	if err := h.m.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := h.dump(); d != "" {
		t.Errorf("after Cleanup:\n%s", d)
	}
	before := h.runs()
	if err := h.m.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.runs() != before {
		t.Errorf("Cleanup of nothing ran a transaction")
	}
}

func TestNFTablesNoFullyRandom(t *testing.T) {
	h := newNFTHarness(t)
	h.c4.checkErr = errors.New("Error: syntax error, unexpected fully-random")
	h.sync(goldenCases[0].cfg)
	if d := h.dump(); strings.Contains(d, "fully-random") || !strings.Contains(d, "masquerade") {
		t.Errorf("rules on a kernel without fully-random:\n%s", d)
	}
	moved := goldenCases[0].cfg
	moved.Subnet = sub4New
	h.sync(moved)
	if h.c4.checks != 1 {
		t.Errorf("probed fully-random %d times, want once", h.c4.checks)
	}
	h.steady(moved)
}

func TestNFTablesErrors(t *testing.T) {
	t.Run("no IPv6", func(t *testing.T) {
		v4 := knftables.NewFake(knftables.IPv4Family, nftTableV4)
		m := NewNFTables(testLog(t), v4, nil)
		n, err := m.Sync(context.Background(), Plan(goldenCases[1].cfg))
		if err == nil || !strings.Contains(err.Error(), "IPv6") {
			t.Errorf("Sync of IPv6 rules without IPv6 = %v, want an IPv6 error", err)
		}
		if n != 2 || v4.Table == nil {
			t.Errorf("IPv4 not synced despite the IPv6 error: repaired %d", n)
		}
		if err := m.Cleanup(context.Background()); err != nil {
			t.Errorf("Cleanup without IPv6: %v", err)
		}
	})
	t.Run("write fails", func(t *testing.T) {
		h := newNFTHarness(t)
		boom := errors.New("boom")
		h.c4.runErr = boom
		n, err := h.m.Sync(context.Background(), Plan(goldenCases[1].cfg))
		if !errors.Is(err, boom) {
			t.Errorf("Sync error = %v, want it to wrap %v", err, boom)
		}
		if n != 2 || h.v6.Table == nil {
			t.Errorf("IPv6 not synced despite the IPv4 error: repaired %d", n)
		}
	})
}
