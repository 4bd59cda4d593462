package bench

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

const (
	// network is the network the bench runs: a /9 of /24s holds 32,768
	// subnets, so 20,000 synthetic peers and the host itself fit.
	network = "10.0.0.0/9"
	// maxSubnets is how many /24s netConfig's /9 holds.
	maxSubnets = 1 << 15
	// prefix is upstream's default etcd prefix.
	prefix = "/coreos.com/network"
	// leaseTTL is each synthetic peer's etcd lease: long enough that none
	// expires during a run, as a live host's would be renewed.
	leaseTTL = 24 * 60 * 60 // seconds
	// txnOps is the number of operations per etcd transaction; etcd
	// refuses more than 128 by default (--max-txn-ops).
	txnOps = 100
	// grantWorkers bounds concurrent lease grants.
	grantWorkers = 16
	// vni is the default VXLAN VNI, the one netConfig implies.
	vni = 1
	// wgPort is upstream's default WireGuard listen port, which every
	// synthetic wireguard peer publishes.
	wgPort = 51820
)

// netConfig is the network config the bench writes for backend.
func netConfig(backend string) string {
	return `{"Network":"` + network + `","SubnetLen":24,"Backend":{"Type":"` + backend + `"}}`
}

// peer is one synthetic host's lease.
type peer struct {
	key   string
	value string
	dst   netip.Prefix
	// pub is the peer's WireGuard public key (wireguard only): the
	// identity of its object in the kernel.
	pub   dataplane.WGKey
	lease clientv3.LeaseID
	// publicIP and data are what value encodes, for stores that publish
	// them otherwise (Kubernetes mode: node annotations).
	publicIP netip.Addr
	data     string
}

// subnetAt returns the i-th /24 of 10.0.0.0/9.
func subnetAt(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
}

// makePeers builds n synthetic peers of backend (vxlan or wireguard) in
// upstream's exact key and value format, skipping the subnet the daemon
// under test holds. Each has a distinct public IP from 100.64.0.0/10
// (shared address space; never reached: the VXLAN driver only needs it as
// a destination, and WireGuard sends nothing to a peer until there is
// traffic for it) and, for vxlan, a distinct unicast, locally administered
// VTEP MAC; for wireguard, a distinct valid public key (wgPeerKey) and
// port 51820.
func makePeers(backend string, n int, self netip.Prefix) ([]peer, error) {
	if n+1 > maxSubnets {
		return nil, fmt.Errorf("%d leases do not fit in %s (at most %d)", n, network, maxSubnets-1)
	}
	if backend != config.BackendVXLAN && backend != config.BackendWireGuard {
		return nil, fmt.Errorf("backend %q: the bench knows vxlan and wireguard", backend)
	}
	out := make([]peer, 0, n)
	for i := 0; len(out) < n; i++ {
		dst := subnetAt(i)
		if dst == self {
			continue
		}
		j := len(out) + 1
		pub := netip.AddrFrom4([4]byte{100, 64 | byte(j>>16), byte(j >> 8), byte(j)})
		a := lease.Attrs{PublicIP: pub, BackendType: backend}
		var key dataplane.WGKey
		if backend == config.BackendWireGuard {
			key = wgPeerKey(j).PublicKey()
			a.BackendData = wireguard.EncodeData(key, wgPort)
		} else {
			mac := dataplane.MAC{0x0e, 0x57, 0, byte(j >> 16), byte(j >> 8), byte(j)}
			a.BackendData = vxlan.EncodeData(vni, mac)
		}
		v, err := a.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("encode lease %s: %w", dst, err)
		}
		out = append(out, peer{
			key:      prefix + "/subnets/" + lease.MakeKey(dst, netip.Prefix{}),
			value:    string(v),
			dst:      dst,
			pub:      key,
			publicIP: pub,
			data:     string(a.BackendData),
		})
	}
	return out, nil
}

// wgPeerKey is synthetic peer j's WireGuard private key: sha256 of its
// number, clamped as Curve25519 wants it. Deterministic, so a run can be
// repeated exactly; distinct numbers give distinct keys (and, but for a
// chance of about 2^-250, distinct public keys, which TestMakePeers checks
// for the first 20,000).
func wgPeerKey(j int) dataplane.WGKey {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(j))
	k := dataplane.WGKey(sha256.Sum256(b[:]))
	k[0] &= 248
	k[31] = k[31]&127 | 64
	return k
}

// grant gives each peer its own etcd lease, concurrently: a grant is a
// raft round trip, and doing 10,000 one after another would dominate the
// run. Grants happen before any timed phase.
func grant(ctx context.Context, cli *clientv3.Client, peers []peer) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(grantWorkers)
	for i := range peers {
		g.Go(func() error {
			r, err := cli.Grant(ctx, leaseTTL)
			if err != nil {
				return fmt.Errorf("grant lease for %s: %w", peers[i].dst, err)
			}
			peers[i].lease = r.ID // each goroutine owns one element
			return nil
		})
	}
	return g.Wait()
}

// writeAll puts (or, with del, deletes) peers in transactions of txnOps,
// one after another, as a burst of hosts joining (leaving) would arrive.
// It returns when the last transaction is acknowledged.
func writeAll(ctx context.Context, cli *clientv3.Client, peers []peer, del bool) error {
	for i := 0; i < len(peers); i += txnOps {
		chunk := peers[i:min(i+txnOps, len(peers))]
		ops := make([]clientv3.Op, len(chunk))
		for j, p := range chunk {
			if del {
				ops[j] = clientv3.OpDelete(p.key)
			} else {
				ops[j] = clientv3.OpPut(p.key, p.value, clientv3.WithLease(p.lease))
			}
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("write leases %d–%d: %w", i, i+len(chunk)-1, err)
		}
	}
	return nil
}
