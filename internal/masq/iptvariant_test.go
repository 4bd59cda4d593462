package masq

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// fakeSaves is iptables-save output by binary name; a name absent from
// installed is not on PATH, and a save binary absent from out fails.
type fakeSaves struct {
	installed []string
	out       map[string]string
}

func (f fakeSaves) commands() iptCommands {
	return iptCommands{
		lookPath: func(name string) (string, error) {
			if slices.Contains(f.installed, name) {
				return "/usr/sbin/" + name, nil
			}
			return "", exec.ErrNotFound
		},
		output: func(_ context.Context, name string) ([]byte, error) {
			if s, ok := f.out[name]; ok {
				return []byte(s), nil
			}
			return nil, errors.New("cannot initialize")
		},
	}
}

var bothVariants = []string{"iptables-legacy", "iptables-legacy-save", "iptables-nft", "iptables-nft-save"}

const (
	kubeletSave = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
	twoRules    = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -i docker0 -j ACCEPT\n-A FORWARD -o docker0 -j ACCEPT\nCOMMIT\n"
	flannelSave = "*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n"
)

func TestChooseIPTables(t *testing.T) {
	for _, tc := range []struct {
		name       string
		f          fakeSaves
		want4      string
		wantStale4 string
	}{
		{"only plain iptables", fakeSaves{installed: []string{"iptables", "iptables-save"}}, "iptables", ""},
		{"no legacy save", fakeSaves{installed: []string{"iptables-legacy", "iptables-nft", "iptables-nft-save"},
			out: map[string]string{"iptables-nft-save": twoRules}}, "iptables", ""},
		{"empty kernel", fakeSaves{installed: bothVariants, out: map[string]string{"iptables-legacy-save": "", "iptables-nft-save": ""}}, "iptables", ""},
		{"both fail", fakeSaves{installed: bothVariants}, "iptables", ""},
		{"kubelet on legacy beats nft's rule count", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-legacy-save": kubeletSave, "iptables-nft-save": twoRules}}, "iptables-legacy", ""},
		{"kubelet on nft beats legacy's rule count", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-legacy-save": twoRules, "iptables-nft-save": kubeletSave}}, "iptables-nft", ""},
		{"kube chains only in ip6tables", fakeSaves{installed: bothVariants,
			out: map[string]string{"ip6tables-legacy-save": kubeletSave, "iptables-nft-save": twoRules}}, "iptables-legacy", ""},
		{"kube chains in both: more rules wins", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-legacy-save": kubeletSave + twoRules, "iptables-nft-save": kubeletSave}}, "iptables-legacy", ""},
		{"no kube: more rules wins", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-legacy-save": "", "iptables-nft-save": twoRules}}, "iptables-nft", ""},
		{"a failing legacy backend counts as empty", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-nft-save": twoRules}}, "iptables-nft", ""},
		{"our old chains in nft, kubelet on legacy", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-legacy-save": kubeletSave, "iptables-nft-save": flannelSave + twoRules}}, "iptables-legacy", "iptables-nft"},
		{"our chains only in the chosen variant", fakeSaves{installed: bothVariants,
			out: map[string]string{"iptables-legacy-save": "", "iptables-nft-save": kubeletSave + flannelSave}}, "iptables-nft", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := chooseIPTables(t.Context(), testLog(t), tc.f.commands())
			want6 := "ip6" + strings.TrimPrefix(tc.want4, "ip")
			if ch.bin4 != tc.want4 || ch.bin6 != want6 {
				t.Errorf("chose %s, %s (%s); want %s, %s", ch.bin4, ch.bin6, ch.reason, tc.want4, want6)
			}
			var stale4 string
			if ch.stale != nil {
				stale4 = ch.stale[0]
			}
			if stale4 != tc.wantStale4 {
				t.Errorf("stale = %v; want %q", ch.stale, tc.wantStale4)
			}
		})
	}
}

// TestPrivIPTablesFollowsHost: with both variants installed (Debian's
// iptables package ships both, as the image does), OpenIPTables writes to
// the backend the kubelet uses, whatever plain `iptables` points to, and
// clears our chains from the other one.
func TestPrivIPTablesFollowsHost(t *testing.T) {
	for _, v := range []string{"legacy", "nft"} {
		if _, err := exec.LookPath("iptables-" + v); err != nil {
			t.Fatalf("this test needs both iptables variants: %v", err)
		}
	}
	for _, tc := range []struct {
		name     string
		setup    []string
		want     iptVariant
		stale    iptVariant // holds our chains before Open
		wantNone iptVariant // holds none after Sync
	}{
		// The kubelet's hint chain in legacy, and more (foreign) rules in
		// nft: the kube chains decide. Our chains left in nft by an
		// earlier, undetecting, weft are removed.
		{"kubelet on legacy", []string{
			"iptables-legacy -t mangle -N KUBE-IPTABLES-HINT",
			"iptables-nft -A FORWARD -i docker0 -j ACCEPT",
			"iptables-nft -A FORWARD -o docker0 -j ACCEPT",
		}, "legacy", "nft", "nft"},
		{"kubelet on nft", []string{
			"iptables-nft -t mangle -N KUBE-IPTABLES-HINT",
			"iptables-legacy -A FORWARD -i docker0 -j ACCEPT",
		}, "nft", "", "legacy"},
		{"no kubelet, rules in legacy", []string{
			"iptables-legacy -A FORWARD -i docker0 -j ACCEPT",
		}, "legacy", "", "nft"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !inNetns(t, nil) {
				return
			}
			for _, c := range tc.setup {
				run(t, "sh", "-c", c)
			}
			rs := Plan(goldenCases[1].cfg)
			if tc.stale != "" {
				old, err := openIPTables(testLog(t), tc.stale.bin("iptables"), tc.stale.bin("ip6tables"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := old.Sync(t.Context(), rs); err != nil {
					t.Fatal(err)
				}
			}
			m, err := OpenIPTables(t.Context(), testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Sync(t.Context(), rs); err != nil {
				t.Fatal(err)
			}
			if s := iptSave(t, tc.want); !strings.Contains(s, ":FLANNEL-POSTRTG") || !strings.Contains(s, "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG") {
				t.Errorf("no flannel rules in iptables-%s:\n%s", tc.want, s)
			}
			if s := iptSave(t, tc.wantNone); strings.Contains(s, "FLANNEL") || strings.Contains(s, "flanneld") {
				t.Errorf("flannel rules in iptables-%s:\n%s", tc.wantNone, s)
			}
		})
	}
}

// TestPrivIPTablesDefaultVariant: on an empty kernel nothing tells the
// variants apart, and plain iptables (the system's alternative) is used.
func TestPrivIPTablesDefaultVariant(t *testing.T) {
	if !inNetns(t, nil) {
		return
	}
	var want, other iptVariant = "nft", "legacy"
	if strings.Contains(run(t, "iptables", "--version"), "(legacy)") {
		want, other = "legacy", "nft"
	}
	m, err := OpenIPTables(t.Context(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Sync(t.Context(), Plan(goldenCases[1].cfg)); err != nil {
		t.Fatal(err)
	}
	if s := iptSave(t, want); !strings.Contains(s, ":FLANNEL-POSTRTG") {
		t.Errorf("no flannel rules in the default iptables-%s:\n%s", want, s)
	}
	if s := iptSave(t, other); strings.Contains(s, "FLANNEL") {
		t.Errorf("flannel rules in iptables-%s:\n%s", other, s)
	}
}
