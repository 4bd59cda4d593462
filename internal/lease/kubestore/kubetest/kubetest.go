// Package kubetest runs a real kube-apiserver for tests (internal/kubeapi),
// stopped when the test ends.
package kubetest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/kubeapi"
	"github.com/weft-net/weft/internal/tooltest"
)

// FlannelUser is kube-flannel's service account, as the API server sees
// it; deploy/'s ClusterRoleBinding names it.
const FlannelUser = kubeapi.FlannelUser

// EnvBinary names the variable holding the kube-apiserver binary's path;
// .ci/run sets it after building.
const EnvBinary = "WEFT_KUBE_APISERVER"

// Options configure a Server.
type Options struct {
	// ExtraIPs are added to the serving certificate, for clients that reach
	// the server through a relay (a lab hub address).
	ExtraIPs []netip.Addr
	// Args are extra kube-apiserver flags.
	Args []string
}

// Server is a running kube-apiserver, stopped with its test.
type Server struct{ *kubeapi.Server }

// Binary returns the kube-apiserver to run: $WEFT_KUBE_APISERVER, else the
// cache path tools/kube-apiserver/build.sh uses; under CI a missing binary
// fails the test, and locally the build script is run (a cold build takes
// ~12 minutes, then it is cached). See tooltest.Binary.
func Binary(t testing.TB) string {
	t.Helper()
	return tooltest.Binary(t, tooltest.Tool{
		Name: "kube-apiserver", Module: "k8s.io/kubernetes", Env: EnvBinary, ColdBuild: "~12 minutes",
	})
}

// Start starts etcd and kube-apiserver and waits until the server is
// ready; both are stopped when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := kubeapi.Start(kubeapi.Options{Binary: Binary(t), Dir: t.TempDir(), ExtraIPs: o.ExtraIPs, Args: o.Args})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", s.Tail(30))
		}
		s.Close()
	})
	t.Logf("kube-apiserver ready at %s after %v", s.URL, s.Ready.Round(10*time.Millisecond))
	return &Server{s}
}

// Restart starts the server again on the same address, with the same etcd,
// certificates and tokens, after stopping it if it runs, and waits until
// it is ready; clients need not change anything. It returns when the
// server answered /readyz.
func (s *Server) Restart(t testing.TB) time.Time {
	t.Helper()
	if err := s.Server.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver restarted at %s, ready after %v", s.URL, s.Ready.Round(10*time.Millisecond))
	return time.Now()
}

// Kubeconfig writes a kubeconfig file for the user of token reaching the
// server at url, and returns its path.
func (s *Server) Kubeconfig(t testing.TB, name, url, token string) string {
	t.Helper()
	path, err := s.Server.Kubeconfig(name, url, token)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// Context returns a context that ends with the test, bounded by timeout.
func Context(t testing.TB, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}
