package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Apply server-side-applies every object of a multi-document YAML stream,
// as `kubectl apply --server-side [--dry-run=server]` would: the server
// validates each object completely (schema, defaults, admission) whether
// or not dryRun keeps it from being stored. It returns one line per object
// ("DaemonSet kube-flannel/kube-flannel-ds") and the joined errors.
func Apply(ctx context.Context, cfg *rest.Config, doc []byte, dryRun bool) ([]string, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		return nil, fmt.Errorf("discover API resources: %w", err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	opts := metav1.ApplyOptions{FieldManager: "weft-test", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(doc), 4096)
	var applied []string
	var errs []error
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return applied, fmt.Errorf("decode manifest: %w", err)
		}
		if len(obj.Object) == 0 {
			continue // an empty document between "---" lines
		}
		gvk := obj.GroupVersionKind()
		name := gvk.Kind + " " + obj.GetName()
		if ns := obj.GetNamespace(); ns != "" {
			name = gvk.Kind + " " + ns + "/" + obj.GetName()
		}
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Apply(ctx, obj.GetName(), &obj, opts); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		applied = append(applied, name)
	}
	return applied, errors.Join(errs...)
}
