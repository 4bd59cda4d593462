package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Synthetic Node objects. Each is shaped like one a kubelet registers and
// keeps up to date on a real cluster, so that what every node agent lists,
// watches and decodes weighs what it weighs there (about 4 KB of JSON):
// labels, kubelet's and kube-controller-manager's annotations, spec
// podCIDR(s) and providerID, and a status with capacity, allocatable, five
// conditions, addresses, daemon endpoints, node info and a list of
// nodeImages container images (each with its digest and a tag, as kubelet
// reports them). The flannel annotations are added as upstream flanneld
// writes them (kube-subnet-manager, backend-type, backend-data,
// public-ip) when a peer joins.

const (
	// annPrefix is kube-flannel's default --kube-annotation-prefix.
	annPrefix = "flannel.alpha.coreos.com/"
	// nodeImages is how many images each synthetic node reports; kubelet
	// reports up to 50 (--node-status-max-images).
	nodeImages = 20
	// kubeWorkers bounds concurrent API writes of the bench itself
	// (creates, patches, deletes).
	kubeWorkers = 32
	// heartbeatPeriod is kubelet's default --node-status-update-frequency:
	// each node's status is patched once per period during the churn.
	heartbeatPeriod = 10 * time.Second
)

// nodeName is the i-th synthetic node's name.
func nodeName(i int) string { return fmt.Sprintf("bench-node-%05d", i) }

// flannelAnnotations are the annotations upstream flanneld writes on its
// node for lease attributes a (IPv4, one backend).
func flannelAnnotations(a map[string]string, publicIP netip.Addr, backendType, data string) {
	a[annPrefix+"kube-subnet-manager"] = "true"
	a[annPrefix+"backend-type"] = backendType
	a[annPrefix+"backend-data"] = data
	a[annPrefix+"public-ip"] = publicIP.String()
}

// syntheticNode is node i with pod subnet cidr and node address ip, as
// kubelet registers it and kube-controller-manager allocates its subnet.
func syntheticNode(i int, cidr netip.Prefix, ip netip.Addr, now time.Time) *corev1.Node {
	name := nodeName(i)
	zone := "zone-" + string(rune('a'+i%3))
	t := metav1.NewTime(now.Truncate(time.Second))
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"beta.kubernetes.io/arch":          "amd64",
				"beta.kubernetes.io/os":            "linux",
				"kubernetes.io/arch":               "amd64",
				"kubernetes.io/hostname":           name,
				"kubernetes.io/os":                 "linux",
				"node.kubernetes.io/instance-type": "m6i.2xlarge",
				"topology.kubernetes.io/region":    "bench-region-1",
				"topology.kubernetes.io/zone":      "bench-region-1" + zone,
			},
			Annotations: map[string]string{
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
				"kubeadm.alpha.kubernetes.io/cri-socket":                 "unix:///run/containerd/containerd.sock",
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:    cidr.String(),
			PodCIDRs:   []string{cidr.String()},
			ProviderID: "bench://" + zone + "/" + name,
		},
		Status: corev1.NodeStatus{
			Capacity:    resources("8", "32767628Ki", "110", "101430960Ki"),
			Allocatable: resources("8", "32665228Ki", "110", "93478772582"),
			Conditions:  conditions(t, t),
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: ip.String()},
				{Type: corev1.NodeHostName, Address: name},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("ec2%05x-0000-4000-8000-%012x", i, i),
				BootID: fmt.Sprintf("%08x-1111-4222-8333-%012x", i, i), KernelVersion: "6.8.0-1021-aws",
				OSImage: "Ubuntu 24.04.1 LTS", ContainerRuntimeVersion: "containerd://1.7.24",
				KubeletVersion: "v1.34.4", KubeProxyVersion: "v1.34.4", OperatingSystem: "linux", Architecture: "amd64",
			},
			Images: images(i),
		},
	}
	return n
}

func resources(cpu, mem, pods, storage string) corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse(cpu),
		corev1.ResourceMemory:           resource.MustParse(mem),
		corev1.ResourcePods:             resource.MustParse(pods),
		corev1.ResourceEphemeralStorage: resource.MustParse(storage),
		"hugepages-1Gi":                 resource.MustParse("0"),
		"hugepages-2Mi":                 resource.MustParse("0"),
	}
}

// conditions are kubelet's four node conditions, heartbeat at hb, plus
// the NetworkUnavailable=False a CNI (flannel) sets.
func conditions(hb, since metav1.Time) []corev1.NodeCondition {
	c := func(typ corev1.NodeConditionType, st corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: typ, Status: st, LastHeartbeatTime: hb, LastTransitionTime: since, Reason: reason, Message: msg}
	}
	return []corev1.NodeCondition{
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, LastHeartbeatTime: since, LastTransitionTime: since,
			Reason: "FlannelIsUp", Message: "Flannel is running on this node"},
		c(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
		c(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
		c(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
		c(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"),
	}
}

// images are the container images node i reports: a shared base set with
// per-node versions, each named by digest and by tag.
func images(i int) []corev1.ContainerImage {
	out := make([]corev1.ContainerImage, nodeImages)
	for j := range out {
		repo := fmt.Sprintf("registry.example.com/team-%d/service-%d", j%7, j)
		out[j] = corev1.ContainerImage{
			Names: []string{
				fmt.Sprintf("%s@sha256:%064x", repo, uint64(j)<<32|uint64(i%17)),
				repo + ":v1." + strconv.Itoa(j) + "." + strconv.Itoa(i%5),
			},
			SizeBytes: int64(20_000_000 + 7_919_113*j),
		}
	}
	return out
}

// nodeSize is the size in bytes of a synthetic node's JSON.
func nodeSize() int {
	b, _ := json.Marshal(syntheticNode(1, netip.MustParsePrefix("10.0.1.0/24"), netip.MustParseAddr("100.64.0.1"), time.Now()))
	return len(b)
}

// parallel runs fn(i) for i in [0, n) on kubeWorkers goroutines.
func parallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(kubeWorkers)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(ctx, i) })
	}
	return g.Wait()
}

// createNodes creates a node for every peer (peer i is node i+1), with no
// flannel annotations: registered, its subnet allocated, its flannel not
// yet running.
func createNodes(ctx context.Context, cs kubernetes.Interface, ps []peer) error {
	now := time.Now()
	return parallel(ctx, len(ps), func(ctx context.Context, i int) error {
		n := syntheticNode(i+1, ps[i].dst, ps[i].publicIP, now)
		if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		return nil
	})
}

// annotate adds (with del: nothing; see deleteNode) peer i's flannel
// annotations to its node, as its flanneld does when it starts.
func annotate(ctx context.Context, cs kubernetes.Interface, i int, p peer) error {
	a := map[string]string{}
	flannelAnnotations(a, p.publicIP, "vxlan", p.data)
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": a}})
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Nodes().Patch(ctx, nodeName(i+1), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s: %w", nodeName(i+1), err)
	}
	return nil
}

// deleteNode deletes peer i's node, as a node leaving the cluster.
func deleteNode(ctx context.Context, cs kubernetes.Interface, i int) error {
	if err := cs.CoreV1().Nodes().Delete(ctx, nodeName(i+1), metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete node %s: %w", nodeName(i+1), err)
	}
	return nil
}

// heartbeatNamed patches a node's status as kubelet does every period:
// new heartbeat times on its four conditions.
func heartbeatNamed(ctx context.Context, cs kubernetes.Interface, name string, now time.Time) error {
	t := metav1.NewTime(now.Truncate(time.Second))
	type cond struct {
		Type              corev1.NodeConditionType `json:"type"`
		LastHeartbeatTime metav1.Time              `json:"lastHeartbeatTime"`
	}
	var cs4 []cond
	for _, typ := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure, corev1.NodeReady} {
		cs4 = append(cs4, cond{typ, t})
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": cs4}})
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Nodes().PatchStatus(ctx, name, patch); err != nil {
		return fmt.Errorf("heartbeat node %s: %w", name, err)
	}
	return nil
}
