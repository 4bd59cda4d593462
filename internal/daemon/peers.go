package daemon

// Peers: lease events folded into the peer map and the desired state.

import (
	"errors"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/weft-net/weft/internal/cowmap"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/lease"
)

// releaseStartupMemory hands back to the system what the start used and
// no longer needs. The start reads the whole store twice (Acquire's
// listing, then the watch's snapshot); among a cluster's worth of leases,
// or junk in the store (the bad-input flood: ~30 MiB of oversized values
// left the daemon at 180 MiB), that is garbage right after the first
// pass, which the GC, with nothing allocating any more, would only collect
// at its two-minute forced cycle and the scavenger return later still.
// One forced collection now costs a few milliseconds, once.
func releaseStartupMemory() { runtime.GC(); debug.FreeOSMemory() }

// newDesired starts the desired state over from our own objects, with
// room for about peers peers. Our own subnets are fixed for the daemon's
// lifetime (a renewal only moves revision and expiry), so the base is the
// same every time.
func (d *daemon) newDesired(peers int) {
	if d.base == nil {
		d.base = d.backend.PlanBase(d.self)
		if d.opts.IPBlackholeRoute {
			d.fallback = d.blackholes()
		}
	}
	d.desired = desired.New(d.base, peers)
	d.desired.SetFallback(d.fallback, nil)
}

// delta is where apply records touched keys: nowhere when the pending
// pass diffs them all anyway.
func (d *daemon) delta() *dataplane.Delta {
	if d.untracked {
		return nil
	}
	return d.touched
}

// apply folds a batch of lease events into the peer map.
func (d *daemon) apply(b lease.Batch) error {
	if b.Snapshot && d.peers.Len() == 0 && d.desired.Peers() == 0 && len(b.Events) > cap0 {
		// The first snapshot of a big cluster: make the maps its size
		// once. Growing them a rehash at a time was half the CPU time of
		// applying 5,000 leases.
		n := len(b.Events)
		d.peers = cowmap.New[lease.ID, *peer](idHash, n)
		d.newDesired(n)
	}
	if b.Snapshot {
		// A snapshot replaces everything: peers not in it are gone.
		seen := make(map[lease.ID]bool, len(b.Events))
		for _, ev := range b.Events {
			if ev.Err == nil || !errors.Is(ev.Err, lease.ErrBadKey) {
				seen[ev.Lease.ID()] = true
			}
		}
		removed := 0
		for id := range d.peers.All() {
			if !seen[id] {
				d.dropPeer(id)
				removed++
			}
		}
		d.skipped.retain(d.skipped.keys(b.Events))
		if _, ok := seen[d.self.ID()]; !ok {
			// After a lapse, until the keeper has reclaimed it.
			if err := d.ownGone(b.Revision, "is not in the store"); err != nil {
				return err
			}
		}
		d.log.Debug("lease snapshot", "leases", len(b.Events), "removed", removed, "revision", b.Revision)
	}
	for _, ev := range b.Events {
		if err := d.applyEvent(ev); err != nil {
			return err
		}
	}
	for reason, n := range d.skipped.takeChanged() {
		d.cfg.Metrics.SetSkipped(reason, n)
	}
	return nil
}

func (d *daemon) applyEvent(ev lease.Event) error {
	if ev.Err != nil && errors.Is(ev.Err, lease.ErrBadKey) {
		// A key that is not a lease's names no subnets: whatever it says,
		// it concerns no peer (and not us).
		if ev.Type == lease.Removed {
			d.skipped.remove(ev.Key)
		} else {
			d.skip(ev, ev.Err)
		}
		return nil
	}
	id := ev.Lease.ID()
	if id == d.self.ID() {
		return d.ownEvent(ev)
	}
	if ev.Type == lease.Removed {
		if _, ok := d.peers.Get(id); ok {
			d.log.Debug("peer removed", "lease", id)
		}
		d.dropPeer(id)
		d.skipped.remove(ev.Key)
		return nil
	}
	err := ev.Err
	var objs dataplane.Objects
	if err == nil {
		objs, err = d.backend.Peer(d.self, ev.Lease)
	}
	if err != nil {
		d.dropPeer(id)
		d.skip(ev, err)
		return nil
	}
	d.skipped.remove(ev.Key)
	d.log.Debug("peer added", "lease", id, "public_ip", ev.Lease.Attrs.PublicIP)
	attrs := ev.Lease.Attrs
	if t := d.backend.Type(); attrs.BackendType == t {
		attrs.BackendType = t // one string for all peers, not one each
	}
	seen, h := time.Now().UnixNano(), uint32(0)
	if old, ok := d.peers.Get(id); ok && old.attrs.Equal(attrs) {
		seen = old.seen
	}
	// A new record each time: snapshots share the old one.
	if old, ok := d.peers.Get(id); ok {
		h = old.h
		d.desired.UpdatePeer(h, objs, d.delta())
	} else {
		h = d.desired.AddPeer(id, objs, d.delta())
	}
	d.peers.Set(id, &peer{attrs: attrs, seen: seen, reservation: ev.Lease.Reservation, h: h})
	return nil
}

// dropPeer forgets a peer and withdraws its objects.
func (d *daemon) dropPeer(id lease.ID) {
	if p, ok := d.peers.Get(id); ok {
		d.peers.Delete(id)
		d.desired.DropPeer(p.h, d.delta())
	}
}
