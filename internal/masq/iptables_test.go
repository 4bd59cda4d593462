package masq

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type iptHarness struct {
	t      *testing.T
	v4, v6 *fakeIPT
	m      *IPTables
}

func newIPTHarness(t *testing.T) *iptHarness {
	h := &iptHarness{t: t, v4: newFakeIPT(), v6: newFakeIPT()}
	h.m = &IPTables{log: testLog(t), tools: [2]iptTool{ipv4: h.v4, ipv6: h.v6}}
	return h
}

func (h *iptHarness) dump() string {
	return "# iptables\n" + h.v4.dump() + "# ip6tables\n" + h.v6.dump()
}

func (h *iptHarness) restores() int { return len(h.v4.restores) + len(h.v6.restores) }

func (h *iptHarness) sync(cfg Config) int {
	h.t.Helper()
	n, err := h.m.Sync(context.Background(), Plan(cfg))
	if err != nil {
		h.t.Fatalf("Sync: %v", err)
	}
	return n
}

func (h *iptHarness) steady(cfg Config) {
	h.t.Helper()
	before := h.restores()
	if n := h.sync(cfg); n != 0 {
		h.t.Errorf("Sync with nothing changed repaired %d, want 0", n)
	}
	if h.restores() != before {
		h.t.Errorf("Sync with nothing changed ran iptables-restore %d times", h.restores()-before)
	}
}

func (h *iptHarness) edit(fake *fakeIPT, table string, lines ...string) {
	h.t.Helper()
	if err := fake.exec(table, lines...); err != nil {
		h.t.Fatalf("editing the fake: %v", err)
	}
}

// TestIPTablesGolden pins the iptables-restore input a first Sync writes.
func TestIPTablesGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			h := newIPTHarness(t)
			if n := h.sync(tc.cfg); n == 0 {
				t.Errorf("first Sync repaired nothing")
			}
			var b strings.Builder
			for _, fam := range []struct {
				name string
				fake *fakeIPT
			}{{"iptables", h.v4}, {"ip6tables", h.v6}} {
				for _, r := range fam.fake.restores {
					b.WriteString("# " + fam.name + "-restore --noflush\n" + r)
				}
			}
			golden(t, "iptables/"+tc.name+".rules", b.String())
			h.steady(tc.cfg)
		})
	}
}

const (
	foreignNat = `-A POSTROUTING -s 192.0.2.0/24 -m comment --comment "someone else" -j MASQUERADE`
	foreignFwd = `-A FORWARD -i docker0 -j ACCEPT`
	jumpNat    = `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`
	jumpFwd    = `-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD`
)

func TestIPTablesRepair(t *testing.T) {
	cfg := goldenCases[1].cfg // dual stack
	rule := func(f *fakeIPT, table, chain string, i int) string { return f.tables[table][chain][i] }
	for _, tc := range []struct {
		name  string
		fake  func(h *iptHarness) *fakeIPT
		table string
		lines func(f *fakeIPT) []string
		want  int
	}{
		{"deleted rule", (*iptHarness).fake4, "nat", func(f *fakeIPT) []string {
			return []string{"-D" + strings.TrimPrefix(rule(f, "nat", iptPostrtg, 3), "-A")}
		}, 1},
		{"foreign rule in our chain", (*iptHarness).fake6, "filter", func(f *fakeIPT) []string {
			return []string{"-A FLANNEL-FWD -j DROP"}
		}, 1},
		{"deleted jump", (*iptHarness).fake4, "filter", func(f *fakeIPT) []string {
			return []string{"-D" + strings.TrimPrefix(jumpFwd, "-A")}
		}, 1},
		{"deleted chain and jump", (*iptHarness).fake6, "nat", func(f *fakeIPT) []string {
			return []string{":FLANNEL-POSTRTG - [0:0]", "-D" + strings.TrimPrefix(jumpNat, "-A"), "-X FLANNEL-POSTRTG"}
		}, 2},
		{"duplicate jump", (*iptHarness).fake4, "nat", func(f *fakeIPT) []string {
			return []string{jumpNat}
		}, 1},
		{"old flannel rule in POSTROUTING", (*iptHarness).fake4, "nat", func(f *fakeIPT) []string {
			return []string{`-A POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN`}
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newIPTHarness(t)
			h.sync(cfg)
			want := h.dump()
			f := tc.fake(h)
			h.edit(f, tc.table, tc.lines(f)...)
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

func (h *iptHarness) fake4() *fakeIPT { return h.v4 }
func (h *iptHarness) fake6() *fakeIPT { return h.v6 }

// TestIPTablesForeignRules: rules other software put in POSTROUTING and
// FORWARD, before and after ours, survive every Sync and Cleanup in place.
func TestIPTablesForeignRules(t *testing.T) {
	h := newIPTHarness(t)
	h.edit(h.v4, "nat", foreignNat)
	h.edit(h.v4, "filter", foreignFwd)
	cfg := goldenCases[0].cfg
	h.sync(cfg)
	h.edit(h.v4, "nat", strings.Replace(foreignNat, "192.0.2.0", "198.51.100.0", 1))

	wantNat := []string{foreignNat, jumpNat, strings.Replace(foreignNat, "192.0.2.0", "198.51.100.0", 1)}
	if diff := cmp.Diff(wantNat, h.v4.tables["nat"]["POSTROUTING"]); diff != "" {
		t.Errorf("POSTROUTING (-want +got):\n%s", diff)
	}
	// Our chain drifts; the repair must not move anything in POSTROUTING.
	h.edit(h.v4, "nat", ":FLANNEL-POSTRTG - [0:0]")
	h.sync(cfg)
	if diff := cmp.Diff(wantNat, h.v4.tables["nat"]["POSTROUTING"]); diff != "" {
		t.Errorf("POSTROUTING after repair (-want +got):\n%s", diff)
	}
	if err := h.m.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{wantNat[0], wantNat[2]}, h.v4.tables["nat"]["POSTROUTING"]); diff != "" {
		t.Errorf("POSTROUTING after Cleanup (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{foreignFwd}, h.v4.tables["filter"]["FORWARD"]); diff != "" {
		t.Errorf("FORWARD after Cleanup (-want +got):\n%s", diff)
	}
}

func TestIPTablesChanges(t *testing.T) {
	h := newIPTHarness(t)
	fresh := newIPTHarness(t)
	dual := goldenCases[1].cfg
	h.sync(dual)

	moved := dual
	moved.Subnet = sub4New
	if n := h.sync(moved); n != 1 {
		t.Errorf("Sync after subnet change repaired %d, want 1", n)
	}
	if strings.Contains(h.dump(), sub4.String()) {
		t.Errorf("old subnet %s still in the rules:\n%s", sub4, h.dump())
	}
	fresh.sync(moved)
	if diff := cmp.Diff(fresh.dump(), h.dump()); diff != "" {
		t.Errorf("after subnet change (-fresh +got):\n%s", diff)
	}

	noMasq := moved
	noMasq.Masquerade = false
	if n := h.sync(noMasq); n != 4 {
		t.Errorf("Sync with masquerade off repaired %d, want 4 (chain and jump, two families)", n)
	}
	if d := h.dump(); strings.Contains(d, iptPostrtg) || !strings.Contains(d, iptForward) {
		t.Errorf("with masquerade off:\n%s", d)
	}
	h.steady(noMasq)

	if err := h.m.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	empty := newIPTHarness(t)
	if diff := cmp.Diff(empty.dump(), h.dump()); diff != "" {
		t.Errorf("after Cleanup (-empty +got):\n%s", diff)
	}
	before := h.restores()
	if err := h.m.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.restores() != before {
		t.Errorf("Cleanup of nothing ran iptables-restore")
	}
}

func TestIPTablesNoRandomFully(t *testing.T) {
	h := newIPTHarness(t)
	h.v4.noRandom = true
	h.sync(goldenCases[0].cfg)
	if d := h.v4.dump(); strings.Contains(d, "--random-fully") || !strings.Contains(d, "-j MASQUERADE") {
		t.Errorf("rules without --random-fully support:\n%s", d)
	}
	h.steady(goldenCases[0].cfg)
}

func TestIPTablesErrors(t *testing.T) {
	t.Run("no ip6tables", func(t *testing.T) {
		v4 := newFakeIPT()
		m := &IPTables{log: testLog(t), tools: [2]iptTool{ipv4: v4}}
		n, err := m.Sync(context.Background(), Plan(goldenCases[1].cfg))
		if err == nil || !strings.Contains(err.Error(), "ip6tables") {
			t.Errorf("Sync of IPv6 rules without ip6tables = %v, want an ip6tables error", err)
		}
		if n != 4 {
			t.Errorf("IPv4 not synced despite the IPv6 error: repaired %d, want 4", n)
		}
		if err := m.Cleanup(context.Background()); err != nil {
			t.Errorf("Cleanup without ip6tables: %v", err)
		}
	})
	t.Run("restore fails", func(t *testing.T) {
		h := newIPTHarness(t)
		boom := errors.New("boom")
		h.v4.failRestore = boom
		n, err := h.m.Sync(context.Background(), Plan(goldenCases[1].cfg))
		if !errors.Is(err, boom) {
			t.Errorf("Sync error = %v, want it to wrap %v", err, boom)
		}
		if n != 4 {
			t.Errorf("IPv6 not synced despite the IPv4 error: repaired %d, want 4", n)
		}
	})
}
