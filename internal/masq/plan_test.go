package masq

import (
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPlanOrder(t *testing.T) {
	p := netip.MustParsePrefix
	// Unmasked input (a host address with the subnet's length) is masked.
	rs := Plan(Config{Network: p("10.244.3.4/16"), Subnet: p("10.244.1.9/24"), Masquerade: true, FullyRandom: true})
	n, s := Match{Prefix: p("10.244.0.0/16")}, Match{Prefix: p("10.244.1.0/24")}
	notN := Match{Prefix: n.Prefix, Not: true}
	want := FamilyRules{Masquerade: []Rule{
		{Mark: 0x4000, Action: ActionReturn},
		{Src: s, Dst: n, Action: ActionReturn},
		{Src: n, Dst: s, Action: ActionReturn},
		{Src: notN, Dst: s, Action: ActionReturn},
		{Src: n, Dst: Match{Prefix: p("224.0.0.0/4"), Not: true}, Action: ActionMasquerade, FullyRandom: true},
		{Src: notN, Dst: n, Action: ActionMasquerade, FullyRandom: true},
	}}
	if diff := cmp.Diff(RuleSet{IPv4: want}, rs, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Plan (-want +got):\n%s", diff)
	}
}

func TestPlanFamilies(t *testing.T) {
	for _, tc := range []struct {
		name          string
		cfg           Config
		v4Masq, v4Fwd int
		v6Masq, v6Fwd int
	}{
		{name: "nothing", cfg: Config{Network: net4, Subnet: sub4}},
		{name: "v4", cfg: Config{Network: net4, Subnet: sub4, Masquerade: true, Forward: true}, v4Masq: 6, v4Fwd: 2},
		{name: "v6 only", cfg: Config{IPv6Network: net6, IPv6Subnet: sub6, Masquerade: true, Forward: true}, v6Masq: 6, v6Fwd: 2},
		{name: "forward only", cfg: Config{Network: net4, IPv6Network: net6, Forward: true}, v4Fwd: 2, v6Fwd: 2},
		{name: "no subnet: no masquerade", cfg: Config{Network: net4, Masquerade: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := Plan(tc.cfg)
			got := []int{len(rs.IPv4.Masquerade), len(rs.IPv4.Forward), len(rs.IPv6.Masquerade), len(rs.IPv6.Forward)}
			want := []int{tc.v4Masq, tc.v4Fwd, tc.v6Masq, tc.v6Fwd}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("rule counts [v4 masq, v4 fwd, v6 masq, v6 fwd] (-want +got):\n%s", diff)
			}
			if len(rs.IPv6.Masquerade) > 0 {
				if got := rs.IPv6.Masquerade[4].Dst; got != (Match{Prefix: netip.MustParsePrefix("ff00::/8"), Not: true}) {
					t.Errorf("IPv6 multicast exclusion = %+v", got)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for valid
	}{
		{"dual stack", Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPv6Subnet: sub6, Masquerade: true}, ""},
		{"forward needs no subnet", Config{Network: net4, Forward: true}, ""},
		{"empty", Config{}, ""},
		{"masquerade without subnet", Config{Network: net4, Masquerade: true}, "needs this host's subnet"},
		{"subnet outside", Config{Network: net4, Subnet: p("10.99.1.0/24"), Masquerade: true}, "not inside"},
		{"subnet wider than network", Config{Network: net4, Subnet: p("10.0.0.0/8"), Masquerade: true}, "not inside"},
		{"v6 in v4 field", Config{Network: net6, Masquerade: true}, "wrong address family"},
		{"mapped v4 in v6 field", Config{IPv6Network: p("::ffff:10.0.0.0/104")}, "wrong address family"},
		{"subnet without network", Config{IPv6Subnet: sub6}, "without a network"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	yes, no := true, false
	found := func(string) (string, error) { return "/usr/sbin/iptables", nil }
	missing := func(string) (string, error) { return "", exec.ErrNotFound }
	for _, tc := range []struct {
		name   string
		enable *bool
		look   func(string) (string, error)
		want   Mode
	}{
		{"true", &yes, found, ModeNFTables},
		{"false", &no, missing, ModeIPTables},
		{"unset with iptables", nil, found, ModeIPTables},
		{"unset without iptables", nil, missing, ModeNFTables},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Select(tc.enable, tc.look); got != tc.want {
				t.Errorf("Select = %q, want %q", got, tc.want)
			}
		})
	}
	var asked string
	Select(nil, func(name string) (string, error) { asked = name; return "", errors.New("no") })
	if asked != "iptables" {
		t.Errorf("Select looked up %q, want iptables", asked)
	}
}
