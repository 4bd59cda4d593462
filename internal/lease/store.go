package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/config"
)

// EventType says whether a lease appeared (or changed) or went away.
type EventType int

const (
	// Added is a lease that is new or whose attributes changed.
	Added EventType = iota
	// Removed is a lease that was deleted or expired.
	Removed
)

func (t EventType) String() string {
	if t == Removed {
		return "removed"
	}
	return "added"
}

// Event is one change to one lease.
type Event struct {
	Type EventType
	// Lease is the lease after the change; for Removed only its subnets
	// (and Revision) are set.
	Lease Lease
	// Err is set when the key or value could not be decoded. Lease then
	// holds the subnets if the key parsed; the daemon skips (and counts)
	// the lease and drops any earlier version of it.
	Err error
	// Key is the raw store key, for logging malformed input.
	Key string
}

// Batch is a group of events delivered together; a burst of writes arrives
// as one batch so the daemon reconciles once for it.
type Batch struct {
	// Snapshot is true when Events (all Added) list every current lease:
	// the first batch of a watch, and the re-list after the store lost
	// history (etcd compaction). It replaces all earlier state; the
	// consumer diffs it against what it had.
	Snapshot bool
	Events   []Event
	// Revision is the store revision the batch brings the consumer to.
	Revision int64
}

// Request asks for a lease for this host.
type Request struct {
	Network *config.Network
	Attrs   Attrs
	// Previous subnets (from subnet.env of an earlier run); reused if free.
	PreviousV4, PreviousV6 netip.Prefix
	// TTL of a new or renewed lease; 0 means DefaultTTL.
	TTL time.Duration
	// Reuse, if set, is called when Acquire finds an existing lease of
	// ours; it returns the attributes to write instead of Attrs. The
	// vxlan backend uses it to keep its VTEP MAC across reboots.
	Reuse func(existing Lease) Attrs
}

// DefaultTTL is upstream's lease lifetime.
const DefaultTTL = 24 * time.Hour

// Errors callers branch on.
var (
	// ErrNoFreeSubnet: every subnet in [SubnetMin, SubnetMax] is taken
	// (leased or reserved); retrying cannot help until one is released.
	ErrNoFreeSubnet = errors.New("network full")
	// ErrLeaseLost: the lease to renew is gone or was taken over; this
	// host must not keep using the subnet.
	ErrLeaseLost = errors.New("lease lost")
	// ErrNoNetworkConfig: the network config key does not exist yet.
	ErrNoNetworkConfig = errors.New("network config not found")
	// ErrSubnetTaken: Reclaim found this host's subnet held by another
	// host (another public IP), which leased it after ours lapsed.
	ErrSubnetTaken = errors.New("subnet taken by another host")
)

// Store is what the daemon needs from a lease store (etcd, Kubernetes).
type Store interface {
	// NetworkConfig returns the raw network config document.
	NetworkConfig(ctx context.Context) ([]byte, error)
	// Acquire returns a lease for this host: the existing lease whose
	// PublicIP (or PublicIPv6) is ours, else the previous subnet if free,
	// else a free subnet. Every write is a compare-and-swap, so two hosts
	// can never hold one subnet.
	Acquire(ctx context.Context, req Request) (Lease, error)
	// Renew extends l (compare-and-swap on its revision) and returns the
	// renewed lease; ErrLeaseLost if it is gone or no longer ours.
	Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// Watch sends a Snapshot batch of all leases, then batches of changes,
	// until ctx ends. It resumes after disconnects from the last revision
	// seen and sends a new Snapshot when history was compacted away. It
	// returns ctx's error, or an error it cannot recover from.
	Watch(ctx context.Context, out chan<- Batch) error
}

// Reclaimer is a Store that can take this host's lease back after it
// lapsed: the key expired while the store was unreachable from here (the
// host was cut off, or the renewal kept failing past the TTL), or an
// operator deleted it. The daemon keeps its dataplane through a lapse and
// reclaims the same subnets rather than restarting onto new ones, which
// would strand every pod addressed from the old subnet.
type Reclaimer interface {
	// Reclaim writes l's key again with l.Attrs and a fresh ttl, as a
	// compare-and-swap: created if the key is absent, rewritten if it is
	// held by this same host (the same public addresses as l.Attrs: a
	// renewal lost to a rewrite of our own, say), kept as it is if it has
	// become an operator's reservation for this host. A key held by
	// another host is left alone: ErrSubnetTaken, naming the holder.
	Reclaim(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
}

// SameHost reports whether two leases' attributes name the same host: the
// same public addresses. The daemon and Reclaim use it to tell a write of
// this host's own (a renewal, a reclaim) from another host's.
func SameHost(a, b Attrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6
}

// TakenError is a Reclaimer's ErrSubnetTaken for key, naming the holder
// as far as the key's value says: holder is what it decoded to, decodeErr
// set if it did not decode.
func TakenError(key string, holder Attrs, decodeErr error) error {
	var who string
	switch {
	case decodeErr != nil:
		who = "a value that does not decode"
	case holder.PublicIP.IsValid():
		who = "host " + holder.PublicIP.String()
	case holder.PublicIPv6.IsValid():
		who = "host " + holder.PublicIPv6.String()
	default:
		who = "a lease without a public address"
	}
	return fmt.Errorf("reclaim lease %s: %w: held by %s", key, ErrSubnetTaken, who)
}
