package lease

// Subnet allocation, shared by every Store so that they pick subnets the
// same way. Everything here is pure: it decides from one listing of the
// store what to write; the store makes the write conditional
// (compare-and-swap) and calls again with a fresh listing on a conflict.
//
// Candidates are numbered by their "subnet index", the subnet's first
// address shifted right by its host bits. Free subnets are found by
// subtracting the (sorted, merged) index intervals covered by taken subnets
// from [SubnetMin, SubnetMax], so the cost depends on the number of leases,
// not on the size of the range: an IPv6 network may hold 2^60 candidates.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/config"
)

// CheckSubnet reports why p cannot be a lease subnet of n: it must be of a
// family the network enables, have the network's subnet length, lie inside
// the network and be in canonical (masked) form. It does not check
// [SubnetMin, SubnetMax]: those bound what is handed out, while an existing
// lease, a reservation or a subnet.env written before the operator narrowed
// the range stays valid as long as it is inside the network.
func CheckSubnet(n *config.Network, p netip.Prefix) error {
	if n == nil {
		return errors.New("no network config")
	}
	if !p.IsValid() {
		return fmt.Errorf("invalid subnet %v", p)
	}
	network, subnetLen, enabled, fam := n.Network, n.SubnetLen, n.EnableIPv4, "IPv4"
	if p.Addr().Is6() {
		network, subnetLen, enabled, fam = n.IPv6Network, n.IPv6SubnetLen, n.EnableIPv6, "IPv6"
	}
	switch {
	case !enabled:
		return fmt.Errorf("subnet %s: %s is not enabled in the network config", p, fam)
	case p.Addr().Is4In6() || p.Addr().Zone() != "":
		return fmt.Errorf("subnet %s: not a plain %s prefix", p, fam)
	case p.Masked() != p:
		return fmt.Errorf("subnet %s: not a subnet boundary", p)
	case p.Bits() != subnetLen:
		return fmt.Errorf("subnet %s: length is not the network's subnet length /%d", p, subnetLen)
	case !network.IsValid() || network.Bits() > p.Bits() || !network.Contains(p.Addr()):
		return fmt.Errorf("subnet %s: not in the network %s", p, network)
	}
	return nil
}

// CheckID reports why id cannot be a lease of n: it must carry exactly the
// families n enables, each passing CheckSubnet. A lease that fails (say
// IPv6 was enabled after it was written) has to be replaced, not reused.
func CheckID(n *config.Network, id ID) error {
	if n == nil {
		return errors.New("no network config")
	}
	var errs []error
	check := func(p netip.Prefix, enabled bool, fam string) {
		switch {
		case enabled && !p.IsValid():
			errs = append(errs, fmt.Errorf("no %s subnet but the network enables %s", fam, fam))
		case !enabled && p.IsValid():
			errs = append(errs, fmt.Errorf("%s subnet %s but the network disables %s", fam, p, fam))
		case enabled:
			if err := CheckSubnet(n, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	check(id.V4, n.EnableIPv4, "IPv4")
	check(id.V6, n.EnableIPv6, "IPv6")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lease %s: %w", id, err)
	}
	return nil
}

// Allocate picks the subnets of a new lease in n: one per enabled family,
// overlapping none of taken (the subnets of every key in the store, leases
// and reservations alike). For each family it uses the first of prefer's
// subnets that passes CheckSubnet and is free, otherwise a subnet chosen
// uniformly at random among the free ones in [SubnetMin, SubnetMax] —
// random rather than lowest-first so that hosts acquiring at the same
// moment seldom pick the same subnet and lose a compare-and-swap. rng may
// be nil (the auto-seeded global source). It returns ErrNoFreeSubnet
// (wrapped) when a family's range is full.
func Allocate(n *config.Network, taken []ID, rng *rand.Rand, prefer ...ID) (ID, error) {
	id, _, err := allocate(n, taken, rng, prefer)
	return id, err
}

// allocate is Allocate that also says why preferred subnets were not used,
// for the store to log.
func allocate(n *config.Network, taken []ID, rng *rand.Rand, prefer []ID) (ID, []error, error) {
	if n == nil {
		return ID{}, nil, errors.New("allocate subnet: no network config")
	}
	if !n.EnableIPv4 && !n.EnableIPv6 {
		return ID{}, nil, errors.New("allocate subnet: the network enables neither IPv4 nor IPv6")
	}
	var id ID
	var skipped []error
	for _, v4 := range []bool{true, false} {
		if (v4 && !n.EnableIPv4) || (!v4 && !n.EnableIPv6) {
			continue
		}
		var pref []netip.Prefix
		for _, p := range prefer {
			if v4 && p.V4.IsValid() {
				pref = append(pref, p.V4)
			} else if !v4 && p.V6.IsValid() {
				pref = append(pref, p.V6)
			}
		}
		p, why, err := allocFamily(n, familyOf(n, v4), takenOf(taken, v4), pref, rng)
		if err != nil {
			return ID{}, nil, err
		}
		skipped = append(skipped, why...)
		if v4 {
			id.V4 = p
		} else {
			id.V6 = p
		}
	}
	return id, skipped, nil
}

// span is one family's allocation range.
type span struct {
	network   netip.Prefix
	subnetLen int
	min, max  netip.Addr
}

func familyOf(n *config.Network, v4 bool) span {
	if v4 {
		return span{n.Network, n.SubnetLen, n.SubnetMin, n.SubnetMax}
	}
	return span{n.IPv6Network, n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax}
}

func takenOf(taken []ID, v4 bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(taken))
	for _, id := range taken {
		p := id.V6
		if v4 {
			p = id.V4
		}
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// allocFamily returns the first usable preferred subnet, else a random free
// one; why lists the preferred subnets it passed over and the reason.
func allocFamily(n *config.Network, s span, taken []netip.Prefix, prefer []netip.Prefix, rng *rand.Rand) (p netip.Prefix, why []error, err error) {
	for _, p := range prefer {
		if err := CheckSubnet(n, p); err != nil {
			why = append(why, fmt.Errorf("preferred %w", err))
		} else if q, ok := overlapping(p, taken); ok {
			why = append(why, fmt.Errorf("preferred subnet %s overlaps %s, which is taken", p, q))
		} else {
			return p, why, nil
		}
	}
	p, err = FreeSubnet(s.network, s.subnetLen, s.min, s.max, taken, rng)
	return p, why, err
}

func overlapping(p netip.Prefix, taken []netip.Prefix) (netip.Prefix, bool) {
	for _, q := range taken {
		if q.Overlaps(p) {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

// FreeSubnet returns a subnet of length subnetLen inside network whose
// first address is in [first, last], overlapping none of taken (prefixes
// of the other family are ignored), chosen uniformly at random among all
// such subnets; ErrNoFreeSubnet (wrapped) if there is none. It runs in
// O(len(taken) log len(taken)) whatever the size of the range, so it finds
// the last free subnet of a large network as cheaply as the first.
func FreeSubnet(network netip.Prefix, subnetLen int, first, last netip.Addr, taken []netip.Prefix, rng *rand.Rand) (netip.Prefix, error) {
	if !network.IsValid() {
		return netip.Prefix{}, fmt.Errorf("allocate subnet: invalid network %v", network)
	}
	network = network.Masked()
	is4 := network.Addr().Is4()
	bitLen := network.Addr().BitLen()
	// A range of 2^128 candidates would not fit the 128-bit count below.
	if subnetLen < network.Bits() || subnetLen > bitLen || subnetLen-network.Bits() >= 128 {
		return netip.Prefix{}, fmt.Errorf("allocate subnet in %s: bad subnet length /%d", network, subnetLen)
	}
	if !first.IsValid() || !last.IsValid() || first.Is4() != is4 || last.Is4() != is4 {
		return netip.Prefix{}, fmt.Errorf("allocate subnet in %s: bad range %v-%v", network, first, last)
	}
	shift := uint(bitLen - subnetLen)
	index := func(a netip.Addr) u128 { return u128From(a).shr(shift) }

	// Candidate indexes: [first, last] intersected with the network. A first
	// address that is not on a subnet boundary starts the range at the next
	// subnet, since the one containing it would begin below first.
	lo, hi := index(first), index(last)
	if u128From(first) != lo.shl(shift) {
		lo = lo.add(u128{lo: 1})
	}
	nlo, nhi := index(network.Addr()), index(lastAddr(network))
	lo, hi = maxU(lo, nlo), minU(hi, nhi)
	if hi.less(lo) {
		return netip.Prefix{}, fmt.Errorf("allocate subnet in %s: %w (empty range %s-%s)", network, ErrNoFreeSubnet, first, last)
	}

	// Index intervals covered by taken subnets, clipped to [lo, hi]. A taken
	// prefix shorter than subnetLen (a lease from an older config) covers
	// several candidates; a longer one covers the candidate containing it.
	type interval struct{ from, to u128 }
	ivs := make([]interval, 0, len(taken))
	for _, q := range taken {
		if !q.IsValid() || q.Addr().Is4() != is4 {
			continue
		}
		q = q.Masked()
		from, to := index(q.Addr()), index(lastAddr(q))
		from, to = maxU(from, lo), minU(to, hi)
		if to.less(from) {
			continue
		}
		ivs = append(ivs, interval{from, to})
	}
	slices.SortFunc(ivs, func(a, b interval) int { return a.from.cmp(b.from) })
	merged := ivs[:0]
	for _, iv := range ivs {
		if k := len(merged) - 1; k >= 0 && !merged[k].to.add(u128{lo: 1}).less(iv.from) {
			merged[k].to = maxU(merged[k].to, iv.to)
			continue
		}
		merged = append(merged, iv)
	}

	all := hi.sub(lo).add(u128{lo: 1})
	free := all
	for _, iv := range merged {
		free = free.sub(iv.to.sub(iv.from).add(u128{lo: 1}))
	}
	if free.isZero() {
		return netip.Prefix{}, fmt.Errorf("%w: all %s /%d subnets of %s between %s and %s are taken", ErrNoFreeSubnet, all, subnetLen, network, first, last)
	}

	// Pick the k-th free index: walk the gaps between taken intervals.
	k := randBelow(free, rng)
	cur := lo
	for _, iv := range merged {
		gap := iv.from.sub(cur)
		if k.less(gap) {
			break
		}
		k = k.sub(gap)
		cur = iv.to.add(u128{lo: 1})
	}
	return netip.PrefixFrom(cur.add(k).shl(shift).addr(is4), subnetLen), nil
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	hostBits := uint(p.Addr().BitLen() - p.Bits())
	a := u128From(p.Masked().Addr())
	ones := u128{hi: ^uint64(0), lo: ^uint64(0)}
	if hostBits < 128 {
		ones = u128{lo: 1}.shl(hostBits).sub(u128{lo: 1})
	}
	return a.or(ones).addr(p.Addr().Is4())
}

// randBelow returns a uniform random number in [0, n); n must not be zero.
func randBelow(n u128, rng *rand.Rand) u128 {
	u64, u64n := rand.Uint64, rand.Uint64N
	if rng != nil {
		u64, u64n = rng.Uint64, rng.Uint64N
	}
	if n.hi == 0 {
		return u128{lo: u64n(n.lo)}
	}
	// Rejection sampling: the high word is drawn below n.hi+1, so each
	// draw is accepted with probability above one half.
	for {
		var hi uint64
		if n.hi == ^uint64(0) {
			hi = u64()
		} else {
			hi = u64n(n.hi + 1)
		}
		if r := (u128{hi: hi, lo: u64()}); r.less(n) {
			return r
		}
	}
}
