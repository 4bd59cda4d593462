// Package kubetest runs a real kube-apiserver for tests: the binary built by
// tools/kube-apiserver/build.sh, backed by an embedded etcd, serving on a
// free 127.0.0.1 port with certificates and tokens made for the run.
//
// Two identities are provisioned by a static token file: an admin (group
// system:masters) and flannel's service account
// system:serviceaccount:kube-flannel:flannel, so that once deploy/'s RBAC
// is applied, the store under test has exactly the permissions kube-flannel
// grants and no more (the server runs with --authorization-mode=RBAC).
package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/tooltest"
)

// FlannelUser is kube-flannel's service account, as the API server sees
// it; deploy/'s ClusterRoleBinding names it.
const FlannelUser = "system:serviceaccount:kube-flannel:flannel"

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

// Server is a running kube-apiserver.
type Server struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Addr is 127.0.0.1:<port>.
	Addr string
	// CA is the PEM of the CA that signed the serving certificate; CAFile
	// holds it.
	CA     []byte
	CAFile string
	// AdminToken and FlannelToken are bearer tokens of the two users.
	AdminToken, FlannelToken string
	// Admin is a client with cluster-admin rights.
	Admin kubernetes.Interface
	// Etcd is the backing etcd, for tests that act on storage directly
	// (compaction).
	Etcd *lab.Etcd
	// Ready is how long the server took from exec to /readyz (the last
	// start's, after a Restart).
	Ready time.Duration
	dir   string
	bin   string
	args  []string // extra flags
	stop  func()   // stops the running process; nil while stopped
}

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
	bin := Binary(t)
	dir := t.TempDir()
	s := &Server{dir: dir}
	if err := s.writePKI(o.ExtraIPs); err != nil {
		t.Fatalf("kube-apiserver PKI: %v", err)
	}
	e, err := lab.StartEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatalf("etcd for kube-apiserver: %v", err)
	}
	t.Cleanup(e.Close)
	s.Etcd = e

	// A free port can be taken between asking and binding; retry then.
	s.bin, s.args = bin, o.Args
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Addr = l.Addr().String()
		l.Close()
		s.URL = "https://" + s.Addr
		if lastErr = s.start(t); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("start kube-apiserver: %v", lastErr)
	}
	t.Logf("kube-apiserver ready at %s after %v", s.URL, s.Ready.Round(10*time.Millisecond))
	s.Admin, err = kubernetes.NewForConfig(s.Config(s.AdminToken))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	return s
}

// Stop stops kube-apiserver (SIGTERM, as a rolling restart does); its etcd
// keeps running. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// Restart starts the server again on the same address, with the same etcd,
// certificates and tokens, after stopping it if it runs, and waits until
// it is ready; clients need not change anything. It returns when the
// server answered /readyz.
func (s *Server) Restart(t testing.TB) time.Time {
	t.Helper()
	s.Stop()
	// The port was ours a moment ago; another process taking it in
	// between is unlikely, and would fail the test plainly.
	if err := s.start(t); err != nil {
		t.Fatalf("restart kube-apiserver at %s: %v", s.Addr, err)
	}
	t.Logf("kube-apiserver restarted at %s, ready after %v", s.URL, s.Ready.Round(10*time.Millisecond))
	return time.Now()
}

// start runs kube-apiserver on s.Addr until the test ends or Stop.
func (s *Server) start(t testing.TB) error {
	bin, extra := s.bin, s.args
	_, port, _ := net.SplitHostPort(s.Addr)
	p := func(name string) string { return filepath.Join(s.dir, name) }
	args := append([]string{
		"--etcd-servers=" + s.Etcd.ClientURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + port,
		// The root namespace may have no default route, from which the
		// server would derive its advertised address.
		"--advertise-address=192.0.2.1",
		"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--token-auth-file=" + p("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/12",
		// No controller-manager makes default service accounts.
		"--disable-admission-plugins=ServiceAccount",
	}, extra...)
	logPath := p("apiserver.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test binary even if it dies without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("exec %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	if err := s.waitReady(exited); err != nil {
		stop()
		return fmt.Errorf("%w; log tail:\n%s", err, tail(logPath, 15))
	}
	s.Ready = time.Since(start)
	s.stop = stop
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", tail(logPath, 30))
		}
	})
	return nil
}

func (s *Server) waitReady(exited <-chan error) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CA)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
		if resp, err := hc.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == "ok" {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("kube-apiserver exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after 90s")
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Config returns a client config for the user of token.
func (s *Server) Config(token string) *rest.Config {
	return s.ConfigAt(s.URL, token)
}

// ConfigAt is Config for a server URL reached another way (a proxy or
// relay whose address is in the serving certificate).
func (s *Server) ConfigAt(url, token string) *rest.Config {
	return &rest.Config{
		Host:            url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CA},
		UserAgent:       "weft-test",
	}
}

// Kubeconfig writes a kubeconfig file for the user of token reaching the
// server at url, and returns its path.
func (s *Server) Kubeconfig(t testing.TB, name, url, token string) string {
	t.Helper()
	path := filepath.Join(s.dir, name+".kubeconfig")
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, url, s.CAFile, name, token, name)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

// writePKI makes a CA, a serving certificate for 127.0.0.1 (and extra),
// a service-account signing key and the static token file.
func (s *Server) writePKI(extra []netip.Addr) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)}
	for _, a := range extra {
		ips = append(ips, a.AsSlice())
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: ips,
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	s.AdminToken, s.FlannelToken = token(), token()
	s.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	s.CAFile = filepath.Join(s.dir, "ca.crt")
	files := map[string][]byte{
		"ca.crt":        s.CA,
		"apiserver.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"apiserver.key": ecKeyPEM(key),
		"sa.key":        ecKeyPEM(saKey),
		"sa.pub":        pubKeyPEM(&saKey.PublicKey),
		"tokens.csv":    []byte(fmt.Sprintf("%s,admin,uid-admin,\"system:masters\"\n%s,%s,uid-flannel\n", s.AdminToken, s.FlannelToken, FlannelUser)),
	}
	for name, b := range files {
		if b == nil {
			return fmt.Errorf("encode %s", name)
		}
		if err := os.WriteFile(filepath.Join(s.dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func ecKeyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func pubKeyPEM(k *ecdsa.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func token() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Context returns a context that ends with the test, bounded by timeout.
func Context(t testing.TB, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}
