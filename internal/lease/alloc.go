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
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"

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

// Plan is what Acquire writes, decided by PlanAcquire from one listing of
// the store. Stores make the write a compare-and-swap against the listing
// (Own's revision, absence of the New key) and plan again on a conflict.
type Plan struct {
	// Own is this host's existing lease or reservation, found by its
	// public IP; meaningful when HasOwn.
	Own    Lease
	HasOwn bool
	// Reuse says Own fits the network and is kept: rewritten in place with
	// the requested attributes and a fresh TTL (a reservation keeps no
	// TTL). Otherwise a lease with the subnets New is created, and Own, if
	// any, is deleted in the same write.
	Reuse bool
	New   ID
	// Attrs are the attributes to write: the request's, or what its Reuse
	// hook returned for Own.
	Attrs Attrs
	// Skipped says why preferred subnets (Own's, or the previous ones from
	// subnet.env) were not used, for the store to log.
	Skipped []error
}

// PlanAcquire decides how to acquire a lease for req, given every lease in
// the store. current must include the leases whose value failed to decode
// (with the subnets from their keys): their subnets are still taken.
//
// The order follows upstream: this host's lease (the one whose PublicIP is
// ours, or PublicIPv6 on an IPv6-only network), else the previous subnets
// if free, else random free subnets. A lease of ours that no longer fits
// the network (IPv6 enabled since it was written, network changed) is
// replaced, keeping whichever of its subnets still fit. A reservation that
// does not fit is an operator error, reported rather than overridden.
// When HasOwn and req.Reuse is set, Attrs is what req.Reuse returns for
// Own (called once per plan, so once per attempt of a store that re-plans
// after a conflict). rng may be nil.
func PlanAcquire(req Request, current []Lease, rng *rand.Rand) (Plan, error) {
	n := req.Network
	if n == nil {
		return Plan{}, errors.New("acquire lease: request has no network config")
	}
	if n.EnableIPv4 && !req.Attrs.PublicIP.IsValid() {
		return Plan{}, errors.New("acquire lease: IPv4 is enabled but the request has no PublicIP")
	}
	if !n.EnableIPv4 && n.EnableIPv6 && !req.Attrs.PublicIPv6.IsValid() {
		return Plan{}, errors.New("acquire lease: IPv6-only network but the request has no PublicIPv6")
	}

	plan := Plan{Attrs: req.Attrs}
	// Several keys may carry our address (a crash between writes under
	// upstream, an operator's reservation added later, a stale or forged
	// lease). Prefer one that fits the network; among those a reservation:
	// it states the operator's intent; and among equals the one holding
	// the subnets subnet.env says this host had, whose addresses its pods
	// still use (upstream takes the first in key order). The others are
	// left to expire; the daemon skips them as peers (own_public_ip).
	previous := ID{req.PreviousV4, req.PreviousV6}
	rank := func(l Lease) int {
		r := 0
		if CheckID(n, l.ID()) == nil {
			r += 4
		}
		if l.Reservation {
			r += 2
		}
		if previous.V4.IsValid() || previous.V6.IsValid() {
			if l.ID() == previous {
				r++
			}
		}
		return r
	}
	for _, l := range current {
		if !isOwn(n, req.Attrs, l.Attrs) {
			continue
		}
		if !plan.HasOwn || rank(l) > rank(plan.Own) {
			plan.Own, plan.HasOwn = l, true
		}
	}
	if plan.HasOwn && req.Reuse != nil {
		plan.Attrs = req.Reuse(plan.Own)
	}
	if plan.HasOwn {
		err := CheckID(n, plan.Own.ID())
		switch {
		case err == nil:
			plan.Reuse, plan.New = true, plan.Own.ID()
			return plan, nil
		case plan.Own.Reservation:
			return Plan{}, fmt.Errorf("acquire lease: reservation %s for this host does not fit the network config: %w", plan.Own.Key(), err)
		}
		plan.Skipped = append(plan.Skipped, fmt.Errorf("replacing own lease: %w", err))
	}

	taken := make([]ID, 0, len(current))
	for _, l := range current {
		// Our own lease is deleted by the same write that creates the new
		// one, so its subnets are ours to keep.
		if plan.HasOwn && l.Key() == plan.Own.Key() {
			continue
		}
		taken = append(taken, l.ID())
	}
	var prefer []ID
	if plan.HasOwn {
		prefer = append(prefer, plan.Own.ID())
	}
	prefer = append(prefer, previous)
	id, skipped, err := allocate(n, taken, rng, prefer)
	if err != nil {
		return Plan{}, fmt.Errorf("acquire lease: %w", err)
	}
	plan.New = id
	plan.Skipped = append(plan.Skipped, skipped...)
	return plan, nil
}

// isOwn reports whether a stored lease with attributes have belongs to the
// host asking with want. The IPv4 address identifies a host (as upstream)
// unless the network is IPv6-only.
func isOwn(n *config.Network, want, have Attrs) bool {
	if n.EnableIPv4 {
		return want.PublicIP.IsValid() && have.PublicIP == want.PublicIP
	}
	return want.PublicIPv6.IsValid() && have.PublicIPv6 == want.PublicIPv6
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

// u128 is an unsigned 128-bit integer, enough for IPv6 subnet indexes.
type u128 struct{ hi, lo uint64 }

func u128From(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) add(v u128) u128 {
	lo, carry := bits.Add64(u.lo, v.lo, 0)
	hi, _ := bits.Add64(u.hi, v.hi, carry)
	return u128{hi, lo}
}

func (u u128) sub(v u128) u128 {
	lo, borrow := bits.Sub64(u.lo, v.lo, 0)
	hi, _ := bits.Sub64(u.hi, v.hi, borrow)
	return u128{hi, lo}
}

func (u u128) shl(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: u.lo << (n - 64)}
	}
	return u128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
}

func (u u128) shr(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: u.hi >> (n - 64)}
	}
	return u128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
}

// String is u in decimal.
func (u u128) String() string {
	if u.hi == 0 {
		return strconv.FormatUint(u.lo, 10)
	}
	return new(big.Int).Or(new(big.Int).Lsh(new(big.Int).SetUint64(u.hi), 64), new(big.Int).SetUint64(u.lo)).String()
}

func (u u128) or(v u128) u128 { return u128{u.hi | v.hi, u.lo | v.lo} }

func (u u128) cmp(v u128) int {
	if c := cmp.Compare(u.hi, v.hi); c != 0 {
		return c
	}
	return cmp.Compare(u.lo, v.lo)
}

func (u u128) less(v u128) bool { return u.cmp(v) < 0 }
func (u u128) isZero() bool     { return u == u128{} }

func maxU(a, b u128) u128 {
	if a.less(b) {
		return b
	}
	return a
}

func minU(a, b u128) u128 {
	if b.less(a) {
		return b
	}
	return a
}
