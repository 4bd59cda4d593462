package lease

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
)

func mustNet(t testing.TB, doc string) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(doc))
	if err != nil {
		t.Fatalf("ParseNetwork(%s): %v", doc, err)
	}
	return n
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func testRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

func TestFreeSubnetLastOneLeft(t *testing.T) {
	// 8192 candidates (10.0.0.0/8 in /21s); all but one taken, at various
	// places including both ends.
	network := pfx("10.0.0.0/8")
	var all []netip.Prefix
	for i := range 8192 {
		all = append(all, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 5), byte(i&31) << 3, 0}), 21))
	}
	first, last := all[0].Addr(), all[len(all)-1].Addr()
	for _, free := range []int{0, 1, 4095, 8190, 8191} {
		taken := append(append([]netip.Prefix{}, all[:free]...), all[free+1:]...)
		start := time.Now()
		got, err := FreeSubnet(network, 21, first, last, taken, testRand())
		if err != nil || got != all[free] {
			t.Errorf("free index %d: got %v, %v; want %v", free, got, err, all[free])
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("free index %d: took %v", free, d)
		}
	}
	_, err := FreeSubnet(network, 21, first, last, all, nil)
	if !errors.Is(err, ErrNoFreeSubnet) {
		t.Errorf("all taken: err = %v, want ErrNoFreeSubnet", err)
	}
	// The operator reads what is full and how big it is.
	if want := "network full: all 8192 /21 subnets of 10.0.0.0/8 between 10.0.0.0 and 10.255.248.0 are taken"; err == nil || err.Error() != want {
		t.Errorf("all taken: err = %v, want %q", err, want)
	}
	if got := (u128{hi: 1}).String(); got != "18446744073709551616" {
		t.Errorf("u128 2^64 = %s", got)
	}
}

func TestFreeSubnetRandomAndFree(t *testing.T) {
	network := pfx("10.5.0.0/16")
	first, last := addr("10.5.1.0"), addr("10.5.8.0") // 8 candidates
	taken := []netip.Prefix{pfx("10.5.2.0/24"), pfx("10.5.5.0/24"), pfx("10.5.7.0/24"), pfx("10.6.0.0/24"), pfx("fc00::/64")}
	want := map[netip.Prefix]bool{pfx("10.5.1.0/24"): true, pfx("10.5.3.0/24"): true, pfx("10.5.4.0/24"): true,
		pfx("10.5.6.0/24"): true, pfx("10.5.8.0/24"): true}
	seen := map[netip.Prefix]int{}
	rng := testRand()
	for range 1000 {
		got, err := FreeSubnet(network, 24, first, last, taken, rng)
		if err != nil || !want[got] {
			t.Fatalf("got %v, %v; want one of %v", got, err, want)
		}
		seen[got]++
	}
	// Uniform over 5: each about 200 of 1000.
	for p := range want {
		if seen[p] < 120 {
			t.Errorf("subnet %s picked %d times in 1000; want about 200", p, seen[p])
		}
	}
}

func TestFreeSubnetOverlaps(t *testing.T) {
	network := pfx("10.5.0.0/16")
	tests := []struct {
		name        string
		first, last string
		taken       []string
		want        string // "" for ErrNoFreeSubnet
	}{
		{"shorter taken prefix covers several", "10.5.0.0", "10.5.3.0", []string{"10.5.0.0/23", "10.5.3.0/24"}, "10.5.2.0/24"},
		{"longer taken prefix covers its subnet", "10.5.0.0", "10.5.1.0", []string{"10.5.0.64/26"}, "10.5.1.0/24"},
		{"unmasked taken prefix", "10.5.0.0", "10.5.1.0", []string{"10.5.1.7/24"}, "10.5.0.0/24"},
		{"taken prefix wider than the network", "10.5.0.0", "10.5.1.0", []string{"10.0.0.0/8"}, ""},
		{"overlapping taken prefixes", "10.5.0.0", "10.5.4.0", []string{"10.5.0.0/22", "10.5.1.0/24", "10.5.2.0/23"}, "10.5.4.0/24"},
		{"adjacent intervals merge", "10.5.0.0", "10.5.2.0", []string{"10.5.0.0/24", "10.5.1.0/24"}, "10.5.2.0/24"},
		{"unaligned first skips a subnet", "10.5.0.1", "10.5.1.0", nil, "10.5.1.0/24"},
		{"unaligned last keeps its subnet", "10.5.1.0", "10.5.1.200", nil, "10.5.1.0/24"},
		{"range clipped to the network", "10.4.255.0", "10.5.0.0", nil, "10.5.0.0/24"},
		{"empty range", "10.5.2.0", "10.5.1.0", nil, ""},
		{"range outside the network", "10.6.0.0", "10.6.1.0", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var taken []netip.Prefix
			for _, s := range tt.taken {
				taken = append(taken, pfx(s))
			}
			got, err := FreeSubnet(network, 24, addr(tt.first), addr(tt.last), taken, testRand())
			if tt.want == "" {
				if !errors.Is(err, ErrNoFreeSubnet) {
					t.Fatalf("got %v, %v; want ErrNoFreeSubnet", got, err)
				}
				return
			}
			if err != nil || got != pfx(tt.want) {
				t.Fatalf("got %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestFreeSubnetIPv6(t *testing.T) {
	// 2^48 candidates: any walk over the range would never finish.
	network := pfx("fc00::/16")
	first, last := addr("fc00:0:0:1::"), addr("fc00:ffff:ffff:ffff::")
	taken := []netip.Prefix{pfx("fc00:0:0:1::/64"), pfx("fc00:1::/32")}
	for range 100 {
		got, err := FreeSubnet(network, 64, first, last, taken, nil)
		if err != nil || got.Bits() != 64 || !network.Contains(got.Addr()) || got.Addr().Less(first) || last.Less(got.Addr()) {
			t.Fatalf("got %v, %v", got, err)
		}
		for _, q := range taken {
			if q.Overlaps(got) {
				t.Fatalf("got %v, overlapping taken %v", got, q)
			}
		}
	}
	// The last free one of a huge range: 127 taken prefixes of lengths 1 to
	// 127 cover everything before it, crossing the 64-bit word boundary of
	// the index arithmetic.
	var chain []netip.Prefix
	for b := 1; b <= 127; b++ {
		var a u128
		if b > 1 {
			a = (u128{hi: ^uint64(0), lo: ^uint64(0)}).shl(uint(129 - b)) // top b-1 bits set
		}
		chain = append(chain, netip.PrefixFrom(a.addr(false), b))
	}
	got, err := FreeSubnet(pfx("::/0"), 127, addr("::"), addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), chain, testRand())
	if err != nil || got != pfx("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127") {
		t.Errorf("last free /127 of ::/0: got %v, %v (chain ends %v)", got, err, chain[len(chain)-3:])
	}
	// Only the top half (2^126 candidates) free: the 128-bit random draw.
	got, err = FreeSubnet(pfx("::/0"), 127, addr("::"), addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
		[]netip.Prefix{pfx("::/1")}, testRand())
	if err != nil || !pfx("8000::/1").Contains(got.Addr()) || got.Bits() != 127 {
		t.Errorf("top half of ::/0: got %v, %v", got, err)
	}
	if _, err := FreeSubnet(pfx("::/0"), 128, addr("::"), addr("::1"), nil, nil); err == nil {
		t.Errorf("2^128 candidates: want an error")
	}
}

func TestFreeSubnetBadInput(t *testing.T) {
	for _, tt := range []struct {
		network     netip.Prefix
		len         int
		first, last netip.Addr
	}{
		{netip.Prefix{}, 24, addr("10.0.0.0"), addr("10.0.1.0")},
		{pfx("10.0.0.0/16"), 8, addr("10.0.0.0"), addr("10.0.1.0")},
		{pfx("10.0.0.0/16"), 33, addr("10.0.0.0"), addr("10.0.1.0")},
		{pfx("10.0.0.0/16"), 24, addr("fc00::"), addr("10.0.1.0")},
		{pfx("10.0.0.0/16"), 24, netip.Addr{}, addr("10.0.1.0")},
	} {
		if p, err := FreeSubnet(tt.network, tt.len, tt.first, tt.last, nil, nil); err == nil || errors.Is(err, ErrNoFreeSubnet) {
			t.Errorf("FreeSubnet(%v, %d, %v, %v) = %v, %v; want a bad-input error", tt.network, tt.len, tt.first, tt.last, p, err)
		}
	}
}

func TestCheckID(t *testing.T) {
	v4 := mustNet(t, `{"Network":"10.5.0.0/16","SubnetLen":24}`)
	dual := mustNet(t, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`)
	v6 := mustNet(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}`)
	tests := []struct {
		n       *config.Network
		id      ID
		wantErr string
	}{
		{v4, ID{V4: pfx("10.5.3.0/24")}, ""},
		{v4, ID{V4: pfx("10.5.0.0/24")}, ""}, // below SubnetMin: still in the network
		{v4, ID{V4: pfx("10.6.3.0/24")}, "not in the network"},
		{v4, ID{V4: pfx("10.5.3.0/25")}, "subnet length"},
		{v4, ID{V4: netip.PrefixFrom(addr("10.5.3.1"), 24)}, "boundary"},
		{v4, ID{V4: pfx("10.0.0.0/8")}, "subnet length"},
		{v4, ID{}, "no IPv4 subnet"},
		{v4, ID{V4: pfx("10.5.3.0/24"), V6: pfx("fc00::/64")}, "disables IPv6"},
		{dual, ID{V4: pfx("10.5.3.0/24"), V6: pfx("fc00:0:0:3::/64")}, ""},
		{dual, ID{V4: pfx("10.5.3.0/24")}, "no IPv6 subnet"},
		{dual, ID{V4: pfx("10.5.3.0/24"), V6: pfx("fc01::/64")}, "not in the network"},
		{v6, ID{V6: pfx("fc00:0:0:3::/64")}, ""},
		{v6, ID{V4: pfx("10.5.3.0/24"), V6: pfx("fc00:0:0:3::/64")}, "disables IPv4"},
		{v6, ID{V6: pfx("::ffff:10.5.3.0/120")}, "not a plain IPv6"},
	}
	for _, tt := range tests {
		err := CheckID(tt.n, tt.id)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("CheckID(%s) = %v, want nil", tt.id, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("CheckID(%s) = %v, want an error containing %q", tt.id, err, tt.wantErr)
		}
	}
	if CheckSubnet(nil, pfx("10.5.3.0/24")) == nil || CheckID(nil, ID{}) == nil {
		t.Errorf("nil network accepted")
	}
}

func TestAllocatePrefer(t *testing.T) {
	n := mustNet(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.9.0",
		"EnableIPv6":true,"IPv6Network":"fc00::/56","IPv6SubnetLen":64}`)
	taken := []ID{{V4: pfx("10.5.1.0/24"), V6: pfx("fc00:0:0:1::/64")}}
	// Per family: the first usable preference wins, else random.
	id, skipped, err := allocate(n, taken, testRand(), []ID{
		{V4: pfx("10.5.1.0/24")},                             // taken
		{V4: pfx("10.9.0.0/24"), V6: pfx("fc00:0:0:7::/64")}, // v4 outside; v6 fine
		{V4: pfx("10.5.3.0/24"), V6: pfx("fc00:0:0:8::/64")}, // v4 fine
	})
	if err != nil || id != (ID{V4: pfx("10.5.3.0/24"), V6: pfx("fc00:0:0:7::/64")}) {
		t.Fatalf("allocate = %s, %v", id, err)
	}
	if len(skipped) != 2 {
		t.Errorf("skipped = %v, want the two unusable IPv4 preferences", skipped)
	}
	id, err = Allocate(n, taken, nil)
	if err != nil || CheckID(n, id) != nil || id.V4 == pfx("10.5.1.0/24") || id.V6 == pfx("fc00:0:0:1::/64") {
		t.Errorf("Allocate without preference = %s, %v", id, err)
	}
	if _, err := Allocate(nil, nil, nil); err == nil {
		t.Errorf("Allocate(nil network) succeeded")
	}
}

func TestPlanAcquire(t *testing.T) {
	v4 := mustNet(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.9.0"}`)
	dual := mustNet(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.9.0",
		"EnableIPv6":true,"IPv6Network":"fc00::/56","IPv6SubnetLen":64}`)
	v6 := mustNet(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/56","IPv6SubnetLen":64}`)
	me := Attrs{PublicIP: addr("10.0.0.1"), PublicIPv6: addr("fd00::1")}
	other := Attrs{PublicIP: addr("10.0.0.2"), PublicIPv6: addr("fd00::2")}
	lse := func(key string, a Attrs, rev int64, res bool) Lease {
		v4, v6, err := ParseKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return Lease{Subnet: v4, IPv6Subnet: v6, Attrs: a, Revision: rev, Reservation: res}
	}
	tests := []struct {
		name    string
		req     Request
		current []Lease
		// want: "reuse <key>", "create <key>", "replace <old> <new>", or
		// "error <substring>"; "<any>" matches a random key.
		want string
	}{
		{"own lease", Request{Network: v4, Attrs: me, PreviousV4: pfx("10.5.5.0/24")},
			[]Lease{lse("10.5.2.0-24", other, 1, false), lse("10.5.3.0-24", me, 2, false)}, "reuse 10.5.3.0-24"},
		{"own reservation beats own lease", Request{Network: v4, Attrs: me},
			[]Lease{lse("10.5.3.0-24", me, 2, false), lse("10.5.40.0-24", me, 3, true)}, "reuse 10.5.40.0-24"},
		{"own lease holding the previous subnets beats another of ours", Request{Network: v4, Attrs: me, PreviousV4: pfx("10.5.7.0/24")},
			[]Lease{lse("10.5.3.0-24", me, 2, false), lse("10.5.7.0-24", me, 3, false), lse("10.5.8.0-24", me, 4, false)}, "reuse 10.5.7.0-24"},
		{"own reservation beats own lease holding the previous subnets", Request{Network: v4, Attrs: me, PreviousV4: pfx("10.5.7.0/24")},
			[]Lease{lse("10.5.7.0-24", me, 3, false), lse("10.5.8.0-24", me, 4, true)}, "reuse 10.5.8.0-24"},
		{"fitting lease beats misfit reservation", Request{Network: v4, Attrs: me},
			[]Lease{lse("10.5.3.0-24", me, 2, false), lse("10.6.0.0-24", me, 3, true)}, "reuse 10.5.3.0-24"},
		{"misfit reservation", Request{Network: dual, Attrs: me},
			[]Lease{lse("10.5.3.0-24", me, 2, true)}, "error reservation 10.5.3.0-24"},
		{"previous", Request{Network: v4, Attrs: me, PreviousV4: pfx("10.5.5.0/24")},
			[]Lease{lse("10.5.2.0-24", other, 1, false)}, "create 10.5.5.0-24"},
		{"previous taken by a malformed value", Request{Network: v4, Attrs: me, PreviousV4: pfx("10.5.5.0/24")},
			[]Lease{{Subnet: pfx("10.5.5.0/24"), Revision: 1}}, "create <any>"},
		{"IPv6 enabled: replace, keeping the IPv4 subnet", Request{Network: dual, Attrs: me, PreviousV6: pfx("fc00:0:0:9::/64")},
			[]Lease{lse("10.5.3.0-24", me, 2, false)}, "replace 10.5.3.0-24 10.5.3.0-24&fc00:0:0:9::-64"},
		{"IPv6-only: matched by PublicIPv6", Request{Network: v6, Attrs: Attrs{PublicIPv6: addr("fd00::1")}},
			[]Lease{lse("0.0.0.0-0&fc00:0:0:4::-64", me, 2, false)}, "reuse 0.0.0.0-0&fc00:0:0:4::-64"},
		{"IPv6-only: IPv4 address ignored", Request{Network: v6, Attrs: Attrs{PublicIP: addr("10.0.0.1"), PublicIPv6: addr("fd00::3")}},
			[]Lease{lse("0.0.0.0-0&fc00:0:0:4::-64", me, 2, false)}, "create <any>"},
		{"no network", Request{Attrs: me}, nil, "error no network config"},
		{"no PublicIP", Request{Network: v4, Attrs: Attrs{PublicIPv6: addr("fd00::1")}}, nil, "error no PublicIP"},
		{"no PublicIPv6", Request{Network: v6, Attrs: Attrs{PublicIP: addr("10.0.0.1")}}, nil, "error no PublicIPv6"},
		{"zero attrs never match", Request{Network: v4, Attrs: me},
			[]Lease{{Subnet: pfx("10.5.5.0/24"), Revision: 1}}, "create <any>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := PlanAcquire(tt.req, tt.current, testRand())
			var got string
			switch {
			case err != nil:
				got = "error " + err.Error()
			case plan.Reuse:
				got = "reuse " + plan.New.String()
			case plan.HasOwn:
				got = "replace " + plan.Own.Key() + " " + plan.New.String()
			default:
				got = "create " + plan.New.String()
			}
			want, any := strings.CutSuffix(tt.want, "<any>")
			if strings.HasPrefix(want, "error ") {
				if !strings.HasPrefix(got, "error ") || !strings.Contains(got, strings.TrimPrefix(want, "error ")) {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
				return
			}
			if (any && !strings.HasPrefix(got, want)) || (!any && got != want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if err := CheckID(tt.req.Network, plan.New); !plan.Reuse && err != nil {
				t.Errorf("new lease does not fit: %v", err)
			}
			for _, l := range tt.current {
				if !plan.Reuse && (!plan.HasOwn || l.Key() != plan.Own.Key()) &&
					(l.Subnet.IsValid() && l.Subnet.Overlaps(plan.New.V4) || l.IPv6Subnet.IsValid() && l.IPv6Subnet.Overlaps(plan.New.V6)) {
					t.Errorf("new lease %s overlaps %s", plan.New, l.Key())
				}
			}
		})
	}
}

func TestU128(t *testing.T) {
	max := u128{^uint64(0), ^uint64(0)}
	one := u128{lo: 1}
	if got := (u128{lo: ^uint64(0)}).add(one); got != (u128{hi: 1}) {
		t.Errorf("carry: %v", got)
	}
	if got := (u128{hi: 1}).sub(one); got != (u128{lo: ^uint64(0)}) {
		t.Errorf("borrow: %v", got)
	}
	if got := max.add(one); !got.isZero() {
		t.Errorf("wrap: %v", got)
	}
	for _, n := range []uint{0, 1, 63, 64, 65, 127, 128} {
		if got := one.shl(n).shr(n); n < 128 && got != one {
			t.Errorf("1<<%d>>%d = %v", n, n, got)
		}
	}
	if got := (u128{hi: 1}).shr(1); got != (u128{lo: 1 << 63}) {
		t.Errorf("shr across words: %v", got)
	}
	if one.shl(128) != (u128{}) || max.shr(128) != (u128{}) {
		t.Errorf("shift by 128 not zero")
	}
	for _, s := range []string{"0.0.0.0", "255.255.255.255", "10.1.2.3", "::", "fc00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "1:2:3:4:5:6:7:8"} {
		a := addr(s)
		if got := u128From(a).addr(a.Is4()); got != a {
			t.Errorf("round trip %s = %s", a, got)
		}
	}
	for _, tt := range []struct{ p, want string }{
		{"10.5.0.0/16", "10.5.255.255"}, {"0.0.0.0/0", "255.255.255.255"}, {"10.1.2.3/32", "10.1.2.3"},
		{"fc00::/16", "fc00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}, {"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
	} {
		if got := lastAddr(pfx(tt.p)); got != addr(tt.want) {
			t.Errorf("lastAddr(%s) = %s, want %s", tt.p, got, tt.want)
		}
	}
	rng := testRand()
	for _, n := range []u128{{lo: 1}, {lo: 7}, {hi: 1}, {hi: 1, lo: 5}, max} {
		for range 100 {
			if r := randBelow(n, rng); !r.less(n) {
				t.Fatalf("randBelow(%v) = %v", n, r)
			}
		}
	}
}

func BenchmarkFreeSubnet8192(b *testing.B) {
	network := pfx("10.0.0.0/8")
	var taken []netip.Prefix
	for i := range 8191 {
		taken = append(taken, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 5), byte(i&31) << 3, 0}), 21))
	}
	for b.Loop() {
		if _, err := FreeSubnet(network, 21, addr("10.0.0.0"), addr("10.255.248.0"), taken, nil); err != nil {
			b.Fatal(err)
		}
	}
}
