package masq

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/knftables"
)

// foreignNFT is someone else's table with a NAT postrouting hook, like
// kube-proxy's or a firewall's: it must survive everything we do.
const foreignNFT = `table ip foreign {
	chain post {
		type nat hook postrouting priority srcnat - 10; policy accept;
		ip saddr 192.0.2.0/24 masquerade
	}
}
`

func listNFT(t *testing.T, family, table string) string {
	t.Helper()
	return run(t, "nft", "list", "table", family, table)
}

// ourNFT is the kernel's listing of both our tables, without handles.
func ourNFT(t *testing.T) string {
	t.Helper()
	return listNFT(t, "ip", nftTableV4) + listNFT(t, "ip6", nftTableV6)
}

// nftHandle is the kernel handle of the i-th rule of a chain.
func nftHandle(t *testing.T, family, table, chain string, i int) string {
	t.Helper()
	var handles []string
	for _, m := range regexp.MustCompile(`# handle (\d+)`).FindAllStringSubmatch(run(t, "nft", "-a", "list", "chain", family, table, chain), -1) {
		handles = append(handles, m[1])
	}
	// The chain itself carries the first handle.
	if i+1 >= len(handles) {
		t.Fatalf("chain %s %s has %d rules, want at least %d", table, chain, len(handles)-1, i+1)
	}
	return handles[i+1]
}

func openNFTCounting(t *testing.T) (*NFTables, *countingNFT, *countingNFT) {
	t.Helper()
	m, err := OpenNFTables(testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	c4, c6 := &countingNFT{Interface: m.nft[ipv4]}, &countingNFT{Interface: m.nft[ipv6]}
	m.nft = [2]knftables.Interface{ipv4: c4, ipv6: c6}
	return m, c4, c6
}

func TestPrivNFTables(t *testing.T) {
	if !inNetns(t, nil) {
		return
	}
	ctx := t.Context()
	nft(t, foreignNFT)
	foreign := listNFT(t, "ip", "foreign")

	m, c4, c6 := openNFTCounting(t)
	cfg := goldenCases[1].cfg // dual stack
	sync := func(want string) int {
		t.Helper()
		n, err := m.Sync(ctx, Plan(cfg))
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		if (want == "0") != (n == 0) {
			t.Fatalf("Sync repaired %d, want %s", n, want)
		}
		return n
	}
	sync(">0")
	want := ourNFT(t)
	t.Logf("kernel:\n%s", want)
	for _, s := range []string{
		"type nat hook postrouting priority srcnat; policy accept;",
		"type filter hook forward priority filter; policy accept;",
		"meta mark & 0x00004000 == 0x00004000 return",
		"ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
		"ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
		"ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
		"ip6 daddr fd00:10:244::/56 accept",
	} {
		if !strings.Contains(want, s) {
			t.Errorf("kernel rules lack %q", s)
		}
	}

	// Nothing changed: no write, same rule handles.
	handles := run(t, "nft", "-a", "list", "table", "ip", nftTableV4)
	runs := c4.runs + c6.runs
	sync("0")
	if c4.runs+c6.runs != runs {
		t.Errorf("Sync with nothing changed wrote %d transactions", c4.runs+c6.runs-runs)
	}
	if got := run(t, "nft", "-a", "list", "table", "ip", nftTableV4); got != handles {
		t.Errorf("Sync with nothing changed rewrote rules:\nbefore:\n%s\nafter:\n%s", handles, got)
	}

	for _, drift := range []struct {
		name   string
		script func() string
	}{
		{"deleted rule", func() string {
			return "delete rule ip flannel-ipv4 postrtg handle " + nftHandle(t, "ip", nftTableV4, nftPostrtg, 3)
		}},
		{"replaced rule", func() string {
			return "replace rule ip6 flannel-ipv6 postrtg handle " + nftHandle(t, "ip6", nftTableV6, nftPostrtg, 4) + " masquerade"
		}},
		{"deleted chain", func() string {
			return "flush chain ip flannel-ipv4 forward\ndelete chain ip flannel-ipv4 forward"
		}},
		{"deleted table", func() string { return "delete table ip6 flannel-ipv6" }},
	} {
		nft(t, drift.script())
		if ourNFTOrEmpty(t) == want {
			t.Fatalf("%s: the edit changed nothing", drift.name)
		}
		sync(">0")
		if diff := cmp.Diff(want, ourNFT(t)); diff != "" {
			t.Errorf("%s: after Sync (-want +got):\n%s", drift.name, diff)
		}
		sync("0")
	}

	// A new lease: nothing may mention the old subnet.
	cfg.Subnet = sub4New
	sync(">0")
	if all := run(t, "nft", "list", "ruleset"); strings.Contains(all, sub4.String()) {
		t.Errorf("old subnet %s still in the ruleset:\n%s", sub4, all)
	}

	if got := listNFT(t, "ip", "foreign"); got != foreign {
		t.Errorf("foreign table changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	tables := run(t, "nft", "list", "tables")
	if strings.Contains(tables, "flannel") || !strings.Contains(tables, "table ip foreign") {
		t.Errorf("after Cleanup, tables:\n%s", tables)
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

// ourNFTOrEmpty is ourNFT but tolerates missing tables.
func ourNFTOrEmpty(t *testing.T) string {
	t.Helper()
	return run(t, "sh", "-c", "nft list table ip "+nftTableV4+" 2>/dev/null; nft list table ip6 "+nftTableV6+" 2>/dev/null; true")
}

// TestPrivNFTablesFromUpstream: the tables upstream flannel leaves are
// taken over (rewritten once) by the first Sync.
func TestPrivNFTablesFromUpstream(t *testing.T) {
	if !inNetns(t, nil) {
		return
	}
	nft(t, `table ip flannel-ipv4 {
	comment "rules for flannel-ipv4"
	chain postrtg {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x4000 return
		ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
		ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
		ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
		ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
		ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.0/16 accept
		ip daddr 10.244.0.0/16 accept
	}
}
table ip6 flannel-ipv6 {
	comment "rules for flannel-ipv6"
}
`)
	m, err := OpenNFTables(testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := goldenCases[0].cfg
	if n, err := m.Sync(t.Context(), Plan(cfg)); err != nil || n != 3 {
		t.Fatalf("Sync over upstream = %d, %v; want 3 (two chains, the empty IPv6 table)", n, err)
	}
	got := listNFT(t, "ip", nftTableV4)
	if strings.Contains(got, "meta mark 0x00004000 return") || !strings.Contains(got, "flanneld masq") {
		t.Errorf("upstream rules not replaced:\n%s", got)
	}
	if n, err := m.Sync(t.Context(), Plan(cfg)); err != nil || n != 0 {
		t.Errorf("second Sync = %d, %v; want 0", n, err)
	}
}

// countingIPT counts iptables-restore runs.
type countingIPT struct {
	iptTool
	restores int
}

func (c *countingIPT) Restore(ctx context.Context, payload []byte) error {
	c.restores++
	return c.iptTool.Restore(ctx, payload)
}

func openIPTCounting(t *testing.T, v iptVariant) (*IPTables, *countingIPT, *countingIPT) {
	t.Helper()
	m, err := openIPTables(testLog(t), v.bin("iptables"), v.bin("ip6tables"))
	if err != nil {
		t.Fatal(err)
	}
	if m.tools[ipv6] == nil {
		t.Fatal("no ip6tables")
	}
	c4, c6 := &countingIPT{iptTool: m.tools[ipv4]}, &countingIPT{iptTool: m.tools[ipv6]}
	m.tools = [2]iptTool{ipv4: c4, ipv6: c6}
	return m, c4, c6
}

// iptVariant is "" for the host's default iptables, or "legacy" or "nft"
// for that variant's binaries (iptables-legacy, iptables-legacy-save, …).
type iptVariant string

func (v iptVariant) bin(name string) string {
	if v == "" {
		return name
	}
	if base, ok := strings.CutSuffix(name, "-save"); ok {
		return base + "-" + string(v) + "-save"
	}
	return name + "-" + string(v)
}

// cmd rewrites a command line starting with iptables or ip6tables.
func (v iptVariant) cmd(c string) string {
	bin, rest, _ := strings.Cut(c, " ")
	return v.bin(bin) + " " + rest
}

// iptSave is iptables-save and ip6tables-save without their timestamps.
func iptSave(t *testing.T, v iptVariant) string {
	t.Helper()
	var lines []string
	for _, bin := range []string{v.bin("iptables-save"), v.bin("ip6tables-save")} {
		for _, l := range strings.Split(run(t, bin), "\n") {
			if !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
	}
	return strings.Join(lines, "\n")
}

func TestPrivIPTables(t *testing.T) {
	if inNetns(t, nil) {
		testIPTables(t, "")
	}
}

// TestPrivIPTablesLegacy runs the same against iptables-legacy, which
// differs from the nft variant in how it reports errors and stores rules.
func TestPrivIPTablesLegacy(t *testing.T) {
	if inNetns(t, nil) {
		testIPTables(t, "legacy")
	}
}

func testIPTables(t *testing.T, v iptVariant) {
	ctx := t.Context()
	foreign4 := []string{
		`iptables -t nat -A POSTROUTING -s 192.0.2.0/24 -m comment --comment "someone else" -j MASQUERADE`,
		`iptables -A FORWARD -i docker0 -j ACCEPT`,
	}
	foreign6 := []string{
		`ip6tables -t nat -A POSTROUTING -s 2001:db8::/32 -j MASQUERADE`,
		`ip6tables -A FORWARD -i docker0 -j ACCEPT`,
	}
	for _, c := range slices.Concat(foreign4, foreign6) {
		run(t, "sh", "-c", v.cmd(c))
	}

	m, c4, c6 := openIPTCounting(t, v)
	cfg := goldenCases[1].cfg
	sync := func(want string) {
		t.Helper()
		n, err := m.Sync(ctx, Plan(cfg))
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		if (want == "0") != (n == 0) {
			t.Fatalf("Sync repaired %d, want %s", n, want)
		}
	}
	sync(">0")
	want := iptSave(t, v)
	t.Logf("kernel:\n%s", want)

	// The kernel prints our rules back exactly as we render them; that is
	// what makes the cheap comparison work.
	for _, tc := range []struct {
		bin, table, chain string
		want              []string
	}{
		{"iptables", "nat", iptPostrtg, iptChains(Plan(cfg).IPv4, true)[0].rules},
		{"iptables", "filter", iptForward, iptChains(Plan(cfg).IPv4, true)[1].rules},
		{"ip6tables", "nat", iptPostrtg, iptChains(Plan(cfg).IPv6, true)[0].rules},
		{"ip6tables", "filter", iptForward, iptChains(Plan(cfg).IPv6, true)[1].rules},
	} {
		got := appendRules(nil, strings.Split(run(t, v.bin(tc.bin), "-t", tc.table, "-S", tc.chain), "\n"), tc.chain)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s -t %s -S %s (-rendered +kernel):\n%s", tc.bin, tc.table, tc.chain, diff)
		}
	}
	// Foreign rules stay first, our jump is appended.
	if got, want := run(t, v.bin("iptables"), "-t", "nat", "-S", "POSTROUTING"), "-P POSTROUTING ACCEPT\n"+
		`-A POSTROUTING -s 192.0.2.0/24 -m comment --comment "someone else" -j MASQUERADE`+"\n"+
		`-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`+"\n"; got != want {
		t.Errorf("POSTROUTING:\n%s\nwant:\n%s", got, want)
	}

	restores := c4.restores + c6.restores
	sync("0")
	if c4.restores+c6.restores != restores {
		t.Errorf("Sync with nothing changed ran iptables-restore")
	}

	for _, drift := range []struct {
		name string
		cmds []string
	}{
		{"deleted rule", []string{"iptables -t nat -D FLANNEL-POSTRTG 3"}},
		{"foreign rule in our chain", []string{"ip6tables -A FLANNEL-FWD -j DROP"}},
		{"deleted jump", []string{`iptables -D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD`}},
		{"deleted chain", []string{
			`ip6tables -t nat -D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`,
			"ip6tables -t nat -F FLANNEL-POSTRTG", "ip6tables -t nat -X FLANNEL-POSTRTG",
		}},
	} {
		for _, c := range drift.cmds {
			run(t, "sh", "-c", v.cmd(c))
		}
		if iptSave(t, v) == want {
			t.Fatalf("%s: the edit changed nothing", drift.name)
		}
		sync(">0")
		if diff := cmp.Diff(want, iptSave(t, v)); diff != "" {
			t.Errorf("%s: after Sync (-want +got):\n%s", drift.name, diff)
		}
		sync("0")
	}

	cfg.Subnet = sub4New
	sync(">0")
	if s := iptSave(t, v); strings.Contains(s, sub4.String()) {
		t.Errorf("old subnet %s still in the rules:\n%s", sub4, s)
	}

	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	s := iptSave(t, v)
	if strings.Contains(s, "FLANNEL") || strings.Contains(s, "flanneld") {
		t.Errorf("after Cleanup:\n%s", s)
	}
	for _, c := range slices.Concat(foreign4, foreign6) {
		rule := c[strings.Index(c, "-A "):]
		if !strings.Contains(s, rule) {
			t.Errorf("foreign rule %q gone after Cleanup:\n%s", rule, s)
		}
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

// TestPrivModeSwitch: a mode's first Sync removes the other mode's rules,
// and not before: until the new mode's rules are in place the old ones
// keep masquerading (a switch has no moment without rules).
func TestPrivModeSwitch(t *testing.T) {
	if !inNetns(t, nil) {
		return
	}
	ctx := t.Context()
	rs := Plan(goldenCases[1].cfg)
	has := func() (ipt, nft bool) {
		s := iptSave(t, "")
		tables := run(t, "nft", "list", "tables")
		return strings.Contains(s, "FLANNEL"), strings.Contains(tables, "flannel-ipv4") || strings.Contains(tables, "flannel-ipv6")
	}
	prev := Mode("")
	for _, mode := range []Mode{ModeIPTables, ModeNFTables, ModeIPTables} {
		m, err := Open(ctx, testLog(t), mode)
		if err != nil {
			t.Fatal(err)
		}
		if m.Mode() != mode {
			t.Fatalf("Open(%s) returned a %s manager", mode, m.Mode())
		}
		if prev != "" {
			ipt, nft := has()
			if ipt != (prev == ModeIPTables) || nft != (prev == ModeNFTables) {
				t.Errorf("opened %s, not synced yet: iptables rules %v, nftables tables %v; want %s's rules still in place", mode, ipt, nft, prev)
			}
		}
		if _, err := m.Sync(ctx, rs); err != nil {
			t.Fatal(err)
		}
		ipt, nft := has()
		if ipt != (mode == ModeIPTables) || nft != (mode == ModeNFTables) {
			t.Errorf("after syncing %s: iptables rules %v, nftables tables %v", mode, ipt, nft)
		}
		prev = mode
	}
}
