package dataplane

import "context"

// Reconciler brings the kernel (or a fake of it) to a declared State.
//
// Reconcile diffs desired against its index of what it installed and
// writes only the difference: it adds and updates before it deletes (so a
// peer that moves never loses its route in between), keeps going past a
// failed write, and returns what it changed together with all errors
// (errors.Join); the index reflects the state actually reached, so the next
// call retries only what failed. With full set it first re-reads the kernel
// (a dump of our devices and of routes carrying RouteProtocol, and the
// peers of our WireGuard devices), which repairs drift and
// garbage-collects objects of ours that desired lacks; without it, no
// dump happens and the cost is proportional to the change. WireGuard
// announces no peer changes, so drift on a peer is only ever found by a
// full Reconcile.
//
// Links in desired are created, adopted (an existing device whose identity
// — VNI, port, local address, parent, GBP, learning; for WireGuard the
// kind alone — matches is reused untouched so a restart keeps traffic
// flowing), or replaced when the identity differs. MTU, MAC, addresses and
// up state (and a WireGuard device's listen port and private key) are
// fixed in place.
// A link that was ours (in the index) and is no longer desired is deleted;
// other links are never deleted.
//
// ReconcileDelta is the incremental form of a non-full Reconcile, for a
// caller that knows which keys changed: it brings the links to desired as
// Reconcile does, then diffs only the touched routes, neighbours, FDB
// entries and WireGuard peers against the index — a touched key in desired is written if the
// index disagrees, a touched key absent from desired is deleted if the
// index has it — so its cost is proportional to the change, not to the
// size of desired. Untouched keys are assumed unchanged since the last
// pass; the result is what a non-full Reconcile of desired would reach
// under that assumption. Whenever the shortcut could miss something — a
// link was created, replaced, re-addressed or removed (the kernel drops or
// flushes what was on it), or the reconciler lost track of the kernel and
// owes a re-read — it falls back to the complete (or full) diff itself.
// Drift repair is not its job: a deletion notification removes the object
// from the index, and only a complete diff (Reconcile) finds it missing.
type Reconciler interface {
	Reconcile(ctx context.Context, desired Wanted, full bool) (Changes, error)
	ReconcileDelta(ctx context.Context, desired Wanted, touched *Delta) (Changes, error)
}
