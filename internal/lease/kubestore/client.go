package kubestore

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// API is the part of the Kubernetes API the store uses: nodes, read and
// watched, this node's status patched, and a pod read to find the node.
// NewClient implements it. The store does not take client-go's clientset
// (kubernetes.Interface): linking it runs the init of
// k8s.io/client-go/kubernetes/scheme, which registers every built-in API
// group (~10 ms and ~650 KB on every start, etcd mode included), and
// faults in code for all of them; the store needs five calls of core/v1.
type API interface {
	// GetNode reads a node.
	GetNode(ctx context.Context, name string) (*corev1.Node, error)
	// ListNodes lists nodes (one page, as opts asks).
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	// WatchNodes watches nodes; events carry *corev1.Node, or a
	// *metav1.Status in an Error event.
	WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	// PatchNodeStatus applies a strategic merge patch to a node through
	// its status subresource (which may set metadata too) and returns the
	// node as patched.
	PatchNodeStatus(ctx context.Context, name string, patch []byte) (*corev1.Node, error)
	// GetPod reads a pod.
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// client is API over a REST client for core/v1, making the requests the
// clientset's typed core/v1 client would (protobuf preferred, JSON
// accepted), with a scheme that knows core/v1 alone.
type client struct {
	rest   *rest.RESTClient
	params runtime.ParameterCodec
	// watchDec decodes a watch event's object (slim.go), as client-go's
	// watch would with the negotiated protobuf decoder.
	watchDec runtime.Decoder
}

var _ API = (*client)(nil)

// NewClient returns an API for the server of cfg. It keeps cfg's
// transport, credentials, user agent, rate limits and timeout, as
// kubernetes.NewForConfig would; cfg is not modified. Nodes listed and
// watched are slim (slim.go): name, resourceVersion, podCIDR(s) and the
// annotations of annotationPrefix (--kube-annotation-prefix; "" keeps
// them all).
func NewClient(cfg *rest.Config, annotationPrefix string) (API, error) {
	keep := ""
	if annotationPrefix != "" {
		a, err := NewAnnotations(annotationPrefix)
		if err != nil {
			return nil, err
		}
		keep = a.prefix
	}
	// A scheme of our own, not client-go's global one: core/v1's
	// AddToScheme also registers the metav1 types every group version
	// carries (ListOptions and the other options, Status for errors,
	// WatchEvent), which is all the requests and responses here need.
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("kubernetes client scheme: %w", err)
	}
	c := rest.CopyConfig(cfg)
	// HTTP/1.1: a watch event is then read by the watch's goroutine
	// straight off the connection, where HTTP/2 has its connection's read
	// loop hand every frame over (a goroutine wake-up per event) and
	// answer it with a WINDOW_UPDATE (a write per event). With the node
	// status churn of a large cluster fanned out to every node, that was
	// most of the daemon's CPU (docs/PERFORMANCE.md). The watch and the
	// other requests then take a connection each.
	if len(c.TLSClientConfig.NextProtos) == 0 {
		c.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = newSlimNegotiator(serializer.NewCodecFactory(scheme).WithoutConversion(), keep)
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cl := &client{rest: rc, params: runtime.NewParameterCodec(scheme)}
	for _, info := range c.NegotiatedSerializer.SupportedMediaTypes() {
		if info.MediaType == runtime.ContentTypeProtobuf {
			cl.watchDec = c.NegotiatedSerializer.DecoderToVersion(info.Serializer, gv)
		}
	}
	if cl.watchDec == nil {
		return nil, errors.New("kubernetes client: no protobuf decoder")
	}
	return cl, nil
}

func (c *client) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rest.Get().UseProtobufAsDefault().
		Resource("nodes").Name(name).
		Do(ctx).Into(n)
	return n, err
}

// ListNodes and WatchNodes make one attempt each: the store's watch loop
// retries on its own schedule (watch.go). client-go's request would
// otherwise retry an EOF (what a relay or load balancer with its backend
// down answers) up to ten times, a second apart, before the loop heard
// of it.
func (c *client) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	err := c.rest.Get().UseProtobufAsDefault().MaxRetries(0).
		Resource("nodes").
		VersionedParams(&opts, c.params).
		Timeout(timeout(opts)).
		Do(ctx).Into(l)
	return l, err
}

// WatchNodes asks for a protobuf watch stream only (kube-apiserver serves
// every built-in type so) and reads it with streamWatch.
func (c *client) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	body, err := c.rest.Get().MaxRetries(0).
		SetHeader("Accept", runtime.ContentTypeProtobuf+";stream=watch").
		Resource("nodes").
		VersionedParams(&opts, c.params).
		Timeout(timeout(opts)).
		Stream(ctx)
	if err != nil {
		return nil, err
	}
	return newStreamWatch(body, c.watchDec), nil
}

func (c *client) PatchNodeStatus(ctx context.Context, name string, patch []byte) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rest.Patch(types.StrategicMergePatchType).UseProtobufAsDefault().
		Resource("nodes").Name(name).SubResource("status").
		Body(patch).
		Do(ctx).Into(n)
	return n, err
}

func (c *client) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	err := c.rest.Get().UseProtobufAsDefault().
		Namespace(namespace).Resource("pods").Name(name).
		Do(ctx).Into(p)
	return p, err
}

// timeout is the request timeout a list or watch asks for, as the
// clientset derives it (none unless opts.TimeoutSeconds is set).
func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}
