package bench

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// KubeResult are the figures of a Kubernetes-mode run.
type KubeResult struct {
	// NodesCreate is how long creating the K+samples+1 synthetic nodes
	// took (before the daemon starts); NodeBytes one node's JSON size.
	NodesCreate float64 `json:"nodesCreate"`
	NodeBytes   int     `json:"nodeBytes"`
	// ChurnUpdates status patches were made in ChurnSeconds; the daemon
	// spent ChurnCPU seconds meanwhile (and until settled), and the
	// kernel announced ChurnKernelChanges route, neighbour, FDB or link
	// changes in its namespace (each a write that changed something).
	ChurnUpdates       int     `json:"churnUpdates"`
	ChurnSeconds       float64 `json:"churnSeconds"`
	ChurnCPU           float64 `json:"churnCPU"`
	ChurnKernelChanges int     `json:"churnKernelChanges"`
	// The daemon's API requests by verb (from the audit log): over the
	// whole run, during the cold start, the single samples and the churn.
	Requests          Requests `json:"requests"`
	ColdStartRequests Requests `json:"coldStartRequests"`
	SinglesRequests   Requests `json:"singlesRequests"`
	ChurnRequests     Requests `json:"churnRequests"`
}

// startDaemon starts the daemon with the store's flags.
func (x *runner) startDaemon() error {
	if x.kube != nil {
		return x.c.Start(x.h, x.kube.flags...)
	}
	return x.c.Start(x.h)
}

// writeAll publishes (with del: withdraws) peers, first being the index of
// peers[0] among all peers: etcd transactions of txnOps one after another,
// or node annotation patches (deletes) kubeWorkers at a time.
func (x *runner) writeAll(ctx context.Context, peers []peer, first int, del bool) error {
	if x.kube != nil {
		return x.kube.write(ctx, peers, first, del)
	}
	return writeAll(ctx, x.cli, peers, del)
}

// writeOne publishes (withdraws) peer i alone: an etcd Put (Delete), or
// its node annotated (deleted).
func (x *runner) writeOne(ctx context.Context, i int, p peer, added bool) error {
	var err error
	switch {
	case x.kube != nil && added:
		err = annotate(ctx, x.kube.admin, i, p)
	case x.kube != nil:
		err = deleteNode(ctx, x.kube.admin, i)
	case added:
		_, err = x.cli.Put(ctx, p.key, p.value, clientv3.WithLease(p.lease))
	default:
		_, err = x.cli.Delete(ctx, p.key)
	}
	return err
}

// requests counts the daemon's API requests so far (Kubernetes mode).
func (x *runner) requests() Requests {
	if x.kube == nil {
		return nil
	}
	return x.kube.requests()
}

// churn updates every node's status, as kubelets do, for ChurnRounds
// heartbeat periods, and records what that cost the daemon (pid): CPU,
// kernel changes (there should be none: nothing the daemon uses
// changed), API requests.
func (x *runner) churn(ctx context.Context, pid int) error {
	ifi, err := x.probe.LinkIndex(x.obs.device())
	if err != nil {
		return err
	}
	kc, err := newKernelCounter(x.ns, ifi)
	if err != nil {
		return err
	}
	defer kc.close()
	x.last = time.Time{} // shown even right after the last single's line
	x.progress(fmt.Sprintf("status churn: %d heartbeats over %s", (x.k+1)*x.o.ChurnRounds, time.Duration(x.o.ChurnRounds)*heartbeatPeriod))
	req0 := x.requests()
	_, cpu0 := procStats(pid)
	k0 := kc.n()
	t0 := time.Now()
	n, err := x.kube.churn(ctx, x.k, x.o.ChurnRounds)
	if err != nil {
		return err
	}
	took := time.Since(t0)
	// The last events reach the daemon a little after the last patch.
	time.Sleep(time.Second)
	_, cpu1 := procStats(pid)
	r := x.r.Kube
	r.ChurnUpdates, r.ChurnSeconds, r.ChurnCPU = n, secs(took), cpu1-cpu0
	r.ChurnKernelChanges = kc.n() - k0
	r.ChurnRequests = x.requests().sub(req0)
	return nil
}
