package lease

// How Acquire decides what to write: the pure half of every store's
// Acquire (alloc.go picks the free subnets it needs).

import (
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/weft-net/weft/internal/config"
)

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
