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
// (a dump of our devices and of routes carrying RouteProtocol), which
// repairs drift and garbage-collects objects of ours that desired lacks;
// without it, no dump happens and the cost is proportional to the change.
//
// Links in desired are created, adopted (an existing device whose identity
// — VNI, port, local address, parent, GBP, learning — matches is reused
// untouched so a restart keeps traffic flowing), or replaced when the
// identity differs. MTU, MAC, address and up state are fixed in place.
// A link that was ours (in the index) and is no longer desired is deleted;
// other links are never deleted.
type Reconciler interface {
	Reconcile(ctx context.Context, desired *State, full bool) (Changes, error)
}
