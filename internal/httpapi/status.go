package httpapi

import (
	"time"

	"github.com/weft-net/weft/internal/dataplane"
)

// The body of /v1/status: the wire types `weft status`, `weft doctor`
// and the tests decode. The daemon fills them (daemon.Board); they live
// here, with the endpoint that serves them, so that a reader of the
// status needs nothing of the daemon. Their JSON names are the API:
// rename a Go field freely, never its tag.

// Status is what `weft status` shows of a running daemon: its lease, its
// peers, the skipped leases and the last reconcile pass, plus the desired
// kernel state so that the caller can compare it with the kernel.
type Status struct {
	Lease   LeaseStatus  `json:"lease"`
	Host    HostStatus   `json:"host"`
	Store   StoreStatus  `json:"store"`
	Backend string       `json:"backend"`
	Rules   string       `json:"rules,omitempty"` // "iptables", "nftables", or "" when not managed
	Peers   []PeerStatus `json:"peers"`
	// Skipped lists skipped peer leases by their raw store key: at most
	// a few per reason (the daemon keeps no more); SkippedByReason counts
	// them all.
	Skipped         []SkipStatus   `json:"skipped,omitempty"`
	SkippedByReason map[string]int `json:"skippedByReason,omitempty"`
	LastPass        PassStatus     `json:"lastPass"`
	Desired         []string       `json:"desired"` // dataplane.State.Lines()
	Devices         []string       `json:"devices"` // our devices, for a kernel dump
	// UDP are the udp devices this daemon serves: their tables live in
	// the process, so only the daemon can show them.
	UDP   []dataplane.UDPStatus `json:"udp,omitempty"`
	Extra map[string]any        `json:"extra,omitempty"`
	// Health is the peers' reachability, probed through the overlay
	// (internal/daemon/probe.go); nil before the daemon holds its lease.
	Health *HealthStatus `json:"health,omitempty"`
}

// LeaseStatus is this host's lease.
type LeaseStatus struct {
	Subnet     string    `json:"subnet,omitempty"`
	IPv6Subnet string    `json:"ipv6Subnet,omitempty"`
	PublicIP   string    `json:"publicIP,omitempty"`
	PublicIPv6 string    `json:"publicIPv6,omitempty"`
	Expires    time.Time `json:"expires,omitzero"`
	Reserved   bool      `json:"reservation,omitempty"`
	// State is "held"; "renewal overdue" (expired by our clock while the
	// store could not be reached: etcd keeps it until it answers);
	// "lapsed, reclaiming" (gone from the store, being written back); or
	// "lost: …" (another host holds the subnet).
	State       string    `json:"state,omitempty"`
	LapsedSince time.Time `json:"lapsedSince,omitzero"`
}

// HostStatus is how this daemon is set up on its host: what `weft
// doctor` compares the kernel against. Fixed once the lease is held.
type HostStatus struct {
	Network     string `json:"network,omitempty"`     // the cluster's IPv4 network
	IPv6Network string `json:"ipv6Network,omitempty"` // and IPv6 network
	MTU         int    `json:"mtu,omitempty"`         // FLANNEL_MTU
	Underlay    string `json:"underlay,omitempty"`    // the inter-host interface
	SubnetFile  string `json:"subnetFile,omitempty"`
	Kube        bool   `json:"kube,omitempty"` // --kube-subnet-mgr
	// ForwardRules says the daemon keeps accept rules in FORWARD
	// (--iptables-forward-rules).
	ForwardRules bool `json:"forwardRules,omitempty"`
	// TxChecksum is --vxlan-tx-checksum (auto, on, off) and, after a
	// colon, what auto chose ("auto:off").
	TxChecksum string `json:"txChecksum,omitempty"`
}

// StoreStatus is the lease store's reachability.
type StoreStatus struct {
	Reachable        bool      `json:"reachable"`
	UnreachableSince time.Time `json:"unreachableSince,omitzero"`
}

// PeerStatus is one programmed peer.
type PeerStatus struct {
	Subnet     string `json:"subnet,omitempty"`
	IPv6Subnet string `json:"ipv6Subnet,omitempty"`
	PublicIP   string `json:"publicIP,omitempty"`
	PublicIPv6 string `json:"publicIPv6,omitempty"`
	Backend    string `json:"backend"`
	// Identity names the peer in its backend data (vxlan: the VTEP MAC;
	// wireguard: the public key), per family.
	Identity   string    `json:"identity,omitempty"`
	IdentityV6 string    `json:"identityV6,omitempty"`
	LastSeen   time.Time `json:"lastSeen"`
}

// SkipStatus is a peer lease that is not used, and why.
type SkipStatus struct {
	// Key is the lease's raw store key (etcd key, node name), shortened
	// when very long.
	Key    string `json:"key"`
	Reason string `json:"reason"`
}

// PassStatus describes the last reconcile pass.
type PassStatus struct {
	At     time.Time `json:"at,omitzero"`
	Full   bool      `json:"full"`
	Writes int       `json:"writes"`
	Took   string    `json:"took"`
	Error  string    `json:"error,omitempty"`
}

// HealthStatus is the "cluster health" part of the status.
type HealthStatus struct {
	// Off says why peers are not probed ("--probe-interval 0", the
	// backend has no probe address, ICMP sockets refused); the rest is
	// then empty.
	Off      string `json:"off,omitempty"`
	Interval string `json:"interval,omitempty"`
	// Peers is how many peers are probed; Reachable and Unreachable
	// those with a result (the rest await their first probe).
	Peers       int `json:"peers"`
	Reachable   int `json:"reachable"`
	Unreachable int `json:"unreachable"`
	// UnreachablePeers lists the unreachable peers by subnet.
	UnreachablePeers []UnreachablePeer `json:"unreachablePeers,omitempty"`
}

// UnreachablePeer is a peer whose probes went unanswered.
type UnreachablePeer struct {
	Subnet     string `json:"subnet,omitempty"`
	IPv6Subnet string `json:"ipv6Subnet,omitempty"`
	PublicIP   string `json:"publicIP,omitempty"`
	PublicIPv6 string `json:"publicIPv6,omitempty"`
	// Probed is the address probed (the backend's ProbeAddr).
	Probed string `json:"probed"`
	// Since is the first unanswered probe since its last reply (or since
	// probing began).
	Since     time.Time `json:"since"`
	LastError string    `json:"lastError"`
}
