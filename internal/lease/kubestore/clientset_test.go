package kubestore

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// clientsetAPI is API over client-go's clientset, making the calls the
// store made before it had API. The unit tests use it with the fake
// clientset, whose reactors and recorded actions they rely on; the tests
// against a real server use it to hold NewClient to the clientset's
// behaviour. Tests only: flanneld does not link the clientset (see API).
type clientsetAPI struct{ c kubernetes.Interface }

var _ API = clientsetAPI{}

func (a clientsetAPI) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	return a.c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

func (a clientsetAPI) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	return a.c.CoreV1().Nodes().List(ctx, opts)
}

func (a clientsetAPI) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return a.c.CoreV1().Nodes().Watch(ctx, opts)
}

func (a clientsetAPI) PatchNodeStatus(ctx context.Context, name string, patch []byte) (*corev1.Node, error) {
	return a.c.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
}

func (a clientsetAPI) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return a.c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}
