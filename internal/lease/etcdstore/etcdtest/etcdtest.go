// Package etcdtest runs throwaway etcd servers for tests, plain or behind
// mutual TLS, with a certificate authority to issue their certificates:
// the store's own tests, the weft CLI's and the daemon's use it to see
// what a client without a valid certificate is told.
package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// PKI is a throwaway certificate authority writing PEM files into a
// directory.
type PKI struct {
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial int64
	// CAFile is the authority's certificate.
	CAFile string
}

// NewPKI makes an authority called name, its files in dir.
func NewPKI(t testing.TB, dir, name string) *PKI {
	t.Helper()
	p := &PKI{dir: dir}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create CA %s: %v", name, err)
	}
	if p.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.key, p.serial = key, 1
	p.CAFile = writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Issue signs a leaf certificate for name (and ips, for a server) and
// returns its certificate and key files.
func (p *PKI) Issue(t testing.TB, name string, usage x509.ExtKeyUsage, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatalf("issue %s: %v", name, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, filepath.Join(p.dir, name+".pem"), "CERTIFICATE", der),
		writePEM(t, filepath.Join(p.dir, name+"-key.pem"), "EC PRIVATE KEY", keyDER)
}

func writePEM(t testing.TB, path, typ string, der []byte) string {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// MTLS is an etcd requiring client certificates: ClientURL (https), the
// CA that signed the server and a client certificate it accepts, and a
// second CA whose certificates it refuses.
type MTLS struct {
	ClientURL                 string
	CA, Other                 *PKI
	ClientCert, ClientKey     string // a client certificate the server accepts
	StrangerCert, StrangerKey string // issued by Other: refused
}

// StartMTLS starts an etcd on loopback that requires client certificates
// signed by its CA; extraIPs are added to the server certificate (an
// address a relay exposes it at). It stops with the test.
func StartMTLS(t testing.TB, extraIPs ...net.IP) *MTLS {
	t.Helper()
	dir := t.TempDir()
	m := &MTLS{CA: NewPKI(t, dir, "ca"), Other: NewPKI(t, dir, "other-ca")}
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1)}, extraIPs...)
	serverCert, serverKey := m.CA.Issue(t, "etcd", x509.ExtKeyUsageServerAuth, ips...)
	m.ClientCert, m.ClientKey = m.CA.Issue(t, "flannel", x509.ExtKeyUsageClientAuth)
	m.StrangerCert, m.StrangerKey = m.Other.Issue(t, "stranger", x509.ExtKeyUsageClientAuth)
	u := start(t, filepath.Join(dir, "etcd"), func(cfg *embed.Config) {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: serverCert, KeyFile: serverKey, TrustedCAFile: m.CA.CAFile, ClientCertAuth: true}
	})
	m.ClientURL = u
	return m
}

// Client returns a client with the accepted certificate, closed with the
// test.
func (m *MTLS) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	tlsCfg, err := (&transport.TLSInfo{CertFile: m.ClientCert, KeyFile: m.ClientKey, TrustedCAFile: m.CA.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Start starts a plain etcd on loopback and returns its client URL; it
// stops with the test.
func Start(t testing.TB) string {
	t.Helper()
	return start(t, filepath.Join(t.TempDir(), "etcd"), nil)
}

func start(t testing.TB, dir string, configure func(*embed.Config)) string {
	t.Helper()
	var lastErr error
	// Another process may take a port between freeURL and etcd's bind.
	for range 5 {
		clientURL, peerURL := freeURL(t), freeURL(t)
		if configure != nil {
			clientURL.Scheme = "https"
		}
		cfg := embed.NewConfig()
		cfg.Name = "weft-test"
		cfg.Dir = dir
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = true
		if configure != nil {
			configure(cfg)
		}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			os.RemoveAll(dir)
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			e.Close()
			t.Fatal("etcd did not become ready")
		}
		t.Cleanup(e.Close)
		return clientURL.String()
	}
	t.Fatalf("start etcd: %v", lastErr)
	return ""
}

func freeURL(t testing.TB) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}
