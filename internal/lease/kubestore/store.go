// Package kubestore is the lease store of Kubernetes mode
// (--kube-subnet-mgr): leases are Node objects. It is wire-compatible with
// upstream flannel's kube subnet manager, so weft and flanneld hosts can
// share a cluster.
//
// Design notes.
//
// Subnets are not allocated here: kube-controller-manager
// (--allocate-node-cidrs) writes each node's spec.podCIDR(s), one per
// family, and that is the node's lease. Acquire therefore only publishes
// this host's attributes as node annotations under the configured prefix
// (kube-subnet-manager, backend-type, backend-data, backend-v6-data,
// public-ip, public-ipv6), honouring the operator's public-ip-overwrite /
// public-ipv6-overwrite. It patches them through the nodes/status
// subresource with a strategic merge patch, as upstream does: that is the
// one write kube-flannel's ClusterRole grants (nodes/status patch), and it
// touches only the keys it names. A lease never expires (Renew is a no-op);
// it ends when the node is deleted.
//
// Peers come from one list and one watch of all nodes, as an informer would
// do, but written out: lease.Store promises a Snapshot batch exactly when
// the consumer must replace its state (first list, and every re-list after
// the server lost the watch's history, 410 Gone), and ordinary batches
// otherwise, including after a reconnect that resumes from the last
// resourceVersion. An informer hides which of those happened. Each node is
// reduced to its lease right away (entry), so 5,000 nodes cost a map of
// small structs, not 5,000 Node objects; kubelet's status heartbeats, which
// rewrite every node every few seconds, are dropped by comparing entries.
//
// The store reaches the API server through API, the five core/v1 calls it
// makes. NewClient implements them on client-go's rest package with a
// scheme holding core/v1 alone, not on the clientset
// (k8s.io/client-go/kubernetes): the clientset's package init registers
// every built-in API group, which flanneld would pay for in startup time
// and resident memory on every start, in etcd mode too.
package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lease"
)

// ErrNoPodCIDR is returned (wrapped) by Acquire while the node has no
// podCIDR yet; the daemon retries, since kube-controller-manager assigns it
// shortly after the node registers.
var ErrNoPodCIDR = errors.New("podCIDR not assigned: run kube-controller-manager with --allocate-node-cidrs=true " +
	"and a --cluster-cidr inside the flannel Network, or set the node's spec.podCIDR")

// Config configures a Store.
type Config struct {
	// Client reaches the API server (NewClient).
	Client API
	// NodeName is this host's Node (see NodeName).
	NodeName string
	// AnnotationPrefix is --kube-annotation-prefix.
	AnnotationPrefix string
	// NetConfigPath is --net-config-path, the network config file (the
	// kube-flannel ConfigMap's net-conf.json, mounted).
	NetConfigPath string
	// OnWatchRestart, if set, is called each time the watch has to be
	// re-established; reason is "list_failed", "interrupted" (resumed from
	// the last resourceVersion) or "compacted" (listed again), as the etcd
	// store reports them. For metrics.
	OnWatchRestart func(reason string)
}

// Store is a lease.Store backed by the Kubernetes API.
type Store struct {
	cfg  Config
	ann  Annotations
	log  *slog.Logger
	page int64 // list page size

	mu sync.Mutex
	// fam is set by Acquire from the network config; the watch decodes
	// peers with it.
	fam       families
	downSince time.Time
}

var _ lease.Store = (*Store)(nil)

// New returns a Store. It does not contact the API server.
func New(log *slog.Logger, cfg Config) (*Store, error) {
	ann, err := NewAnnotations(cfg.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	if cfg.Client == nil || cfg.NodeName == "" {
		return nil, errors.New("kubestore: a client and a node name are required")
	}
	return &Store{cfg: cfg, ann: ann, log: log, page: 500}, nil
}

// NetworkConfig reads the network config file. A missing file is
// lease.ErrNoNetworkConfig, so the daemon waits for it like for etcd's key.
func (s *Store) NetworkConfig(ctx context.Context) ([]byte, error) {
	b, err := os.ReadFile(s.cfg.NetConfigPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", lease.ErrNoNetworkConfig, s.cfg.NetConfigPath)
	}
	if err != nil {
		return nil, fmt.Errorf("read network config: %w", err)
	}
	return b, nil
}

// Acquire returns this node's lease: its podCIDR(s), with req's attributes
// (or, when the node already carries a lease of ours and req.Reuse is set,
// Reuse's) published as annotations. It writes only when an annotation
// differs, so a restart with unchanged attributes costs one GET.
func (s *Store) Acquire(ctx context.Context, req lease.Request) (lease.Lease, error) {
	n := req.Network
	fam := families{known: true, ipv4: n.EnableIPv4, ipv6: n.EnableIPv6}
	s.mu.Lock()
	s.fam = fam
	s.mu.Unlock()

	node, err := s.cfg.Client.GetNode(ctx, s.cfg.NodeName)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("get node %s: %w", s.cfg.NodeName, err)
	}
	v4, v6, err := podCIDRs(node.Spec)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("node %s: %w", s.cfg.NodeName, err)
	}
	if (n.EnableIPv4 && !v4.IsValid()) || (n.EnableIPv6 && !v6.IsValid()) {
		return lease.Lease{}, fmt.Errorf("node %s (podCIDRs %q): %w", s.cfg.NodeName, node.Spec.PodCIDRs, ErrNoPodCIDR)
	}
	l := lease.Lease{}
	if n.EnableIPv4 {
		if !n.Network.Contains(v4.Addr()) || v4.Bits() < n.Network.Bits() {
			return lease.Lease{}, fmt.Errorf("node %s: podCIDR %s is not inside the flannel Network %s", s.cfg.NodeName, v4, n.Network)
		}
		l.Subnet = v4
	}
	if n.EnableIPv6 {
		if !n.IPv6Network.Contains(v6.Addr()) || v6.Bits() < n.IPv6Network.Bits() {
			return lease.Lease{}, fmt.Errorf("node %s: IPv6 podCIDR %s is not inside the flannel IPv6Network %s", s.cfg.NodeName, v6, n.IPv6Network)
		}
		l.IPv6Subnet = v6
	}

	attrs := req.Attrs
	if req.Reuse != nil {
		if e, err := s.ann.decode(node, fam); err == nil && e.err == nil && e.lease.ID() == l.ID() {
			attrs = req.Reuse(e.lease)
		}
	}
	want := s.wantAnnotations(node.Annotations, attrs, fam)
	changed := map[string]string{}
	for k, v := range want {
		if old, ok := node.Annotations[k]; !ok || old != v {
			changed[k] = v
		}
	}
	if len(changed) > 0 {
		node, err = s.patchAnnotations(ctx, changed)
		if err != nil {
			return lease.Lease{}, err
		}
		s.log.Info("published lease annotations", "node", s.cfg.NodeName, "changed", len(changed))
	}
	// What was written, read back: with an overwrite annotation the public
	// IP peers see is not the one this host chose, and the daemon compares
	// its own lease as watched with what Acquire returned.
	e, err := s.ann.decode(node, fam)
	if err != nil || e.err != nil {
		return lease.Lease{}, fmt.Errorf("node %s after publishing: %w", s.cfg.NodeName, errors.Join(err, e.err))
	}
	return e.lease, nil
}

// wantAnnotations returns the annotations that publish attrs, with the
// operator's overwrites applied.
func (s *Store) wantAnnotations(cur map[string]string, attrs lease.Attrs, fam families) map[string]string {
	a := s.ann
	want := map[string]string{
		a.SubnetKubeManaged: "true",
		a.BackendType:       attrs.BackendType,
	}
	if fam.ipv4 {
		want[a.BackendData] = dataString(attrs.BackendData)
		want[a.PublicIP] = addrString(attrs.PublicIP)
		if o := cur[a.PublicIPOverwrite]; o != "" {
			want[a.PublicIP] = o
		}
	}
	if fam.ipv6 {
		want[a.BackendV6Data] = dataString(attrs.BackendV6Data)
		want[a.PublicIPv6] = addrString(attrs.PublicIPv6)
		if o := cur[a.PublicIPv6Overwrite]; o != "" {
			want[a.PublicIPv6] = o
		}
	}
	return want
}

// dataString writes backend data as upstream does: "null" when a backend
// (host-gw) has none.
func dataString(d json.RawMessage) string {
	if len(d) == 0 {
		return "null"
	}
	return string(d)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// patchAnnotations sets annotations on this node through nodes/status.
func (s *Store) patchAnnotations(ctx context.Context, set map[string]string) (*corev1.Node, error) {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
	if err != nil {
		return nil, fmt.Errorf("encode annotation patch: %w", err)
	}
	n, err := s.cfg.Client.PatchNodeStatus(ctx, s.cfg.NodeName, patch)
	if err != nil {
		return nil, fmt.Errorf("patch annotations of node %s: %w", s.cfg.NodeName, err)
	}
	return n, nil
}

// Renew returns l: a node's podCIDR is its for the node's lifetime, and
// the daemon learns that the node was deleted from the watch.
func (s *Store) Renew(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	return l, nil
}

// SetNetworkAvailable sets this node's NetworkUnavailable condition to
// False (reason FlannelIsUp), which kubelet and the scheduler wait for on
// clouds whose route controller would otherwise set it. Conditions merge
// by type under a strategic merge patch, so only ours is touched.
func (s *Store) SetNetworkAvailable(ctx context.Context) error {
	now := metav1.Now()
	cond := corev1.NodeCondition{
		Type:               corev1.NodeNetworkUnavailable,
		Status:             corev1.ConditionFalse,
		Reason:             "FlannelIsUp",
		Message:            "Flannel is running on this node",
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return fmt.Errorf("encode condition patch: %w", err)
	}
	if _, err := s.cfg.Client.PatchNodeStatus(ctx, s.cfg.NodeName, patch); err != nil {
		return fmt.Errorf("set NetworkUnavailable=False on node %s: %w", s.cfg.NodeName, err)
	}
	return nil
}

// NodePublicIPs returns the operator's node-public-ip and node-public-ipv6
// annotations (invalid when unset), which choose the underlay interface
// like --public-ip does.
func (s *Store) NodePublicIPs(ctx context.Context) (v4, v6 netip.Addr, err error) {
	node, err := s.cfg.Client.GetNode(ctx, s.cfg.NodeName)
	if err != nil {
		return v4, v6, fmt.Errorf("get node %s: %w", s.cfg.NodeName, err)
	}
	if v := node.Annotations[s.ann.NodePublicIP]; v != "" {
		if v4, err = parseIP(v, false); err != nil {
			return v4, v6, fmt.Errorf("node %s annotation %s: %w", s.cfg.NodeName, s.ann.NodePublicIP, err)
		}
	}
	if v := node.Annotations[s.ann.NodePublicIPv6]; v != "" {
		if v6, err = parseIP(v, true); err != nil {
			return v4, v6, fmt.Errorf("node %s annotation %s: %w", s.cfg.NodeName, s.ann.NodePublicIPv6, err)
		}
	}
	return v4, v6, nil
}

// WatchDownSince returns when the watch last failed and has not recovered
// since, or the zero time if it is healthy (for /healthz).
func (s *Store) WatchDownSince() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.downSince
}

// downFor is how long the store has been unreachable (0 while it
// answers).
func (s *Store) downFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.downSince.IsZero() {
		return 0
	}
	return time.Since(s.downSince)
}

func (s *Store) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !down:
		s.downSince = time.Time{}
	case s.downSince.IsZero():
		s.downSince = time.Now()
	}
}

func (s *Store) restarted(reason string) {
	if s.cfg.OnWatchRestart != nil {
		s.cfg.OnWatchRestart(reason)
	}
}

func (s *Store) families() families {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fam
}

// NodeName finds this host's node: $NODE_NAME, else the node that the pod
// $POD_NAMESPACE/$POD_NAME (kube-flannel's DaemonSet sets both) runs on.
func NodeName(ctx context.Context, c API, getenv func(string) string) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	name, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if name == "" || ns == "" {
		return "", errors.New("node name unknown: set NODE_NAME, or POD_NAME and POD_NAMESPACE")
	}
	pod, err := c.GetPod(ctx, ns, name)
	if err != nil {
		return "", fmt.Errorf("get pod %s/%s for its node name: %w", ns, name, err)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s is not scheduled to a node", ns, name)
	}
	return pod.Spec.NodeName, nil
}

// isGone reports whether the server no longer has the history a watch or
// a list continuation asked for: the consumer must re-list.
func isGone(err error) bool {
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}
