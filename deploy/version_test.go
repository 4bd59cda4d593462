package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestVersionInOnePlace: VERSION is the release; the manifest's images,
// the chart's version and appVersion, and the image build all take it.
func TestVersionInOnePlace(t *testing.T) {
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	version := strings.TrimSpace(read("VERSION"))
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(version) {
		t.Fatalf("VERSION = %q; want vMAJOR.MINOR.PATCH", version)
	}

	images := regexp.MustCompile(`(?m)^\s*image:\s*(\S+)`).FindAllStringSubmatch(read(manifest), -1)
	if len(images) != 3 {
		t.Errorf("%s has %d images; want 3 (install-cni-plugin, install-cni, kube-flannel)", manifest, len(images))
	}
	for _, m := range images {
		if want := "ghcr.io/weft-net/weft:" + version; m[1] != want {
			t.Errorf("%s: image %s; want %s", manifest, m[1], want)
		}
	}

	chart := parseObjects(t, []byte(read(chartDir+"/Chart.yaml")))
	for _, c := range chart {
		if got := c["appVersion"]; got != version {
			t.Errorf("Chart.yaml appVersion = %v; want %s", got, version)
		}
		if got := c["version"]; got != strings.TrimPrefix(version, "v") {
			t.Errorf("Chart.yaml version = %v; want %s", got, strings.TrimPrefix(version, "v"))
		}
	}
	if len(chart) != 1 {
		t.Errorf("Chart.yaml: %d documents", len(chart))
	}

	// The image build stamps the binaries from VERSION, and make image
	// tags the image with it.
	if !strings.Contains(read("Dockerfile"), "-X main.version=$(cat deploy/VERSION)") {
		t.Error("Dockerfile does not stamp the binaries with deploy/VERSION")
	}
	if !regexp.MustCompile(`(?m)^VERSION := \$\(shell cat deploy/VERSION\)$`).MatchString(read("../Makefile")) ||
		!strings.Contains(read("../Makefile"), "-t $(IMAGE):$(VERSION)") {
		t.Error("Makefile's image target does not tag the image with deploy/VERSION")
	}
}
