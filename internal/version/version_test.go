package version

import (
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// The default Collection must be galaxy.yml's version: a binary built without the
// Makefile's stamp still names the release it belongs to.
func TestCollectionDefaultIsGalaxyVersion(t *testing.T) {
	b, err := os.ReadFile("../../galaxy.yml")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^version:\s*"?([0-9][0-9.]*)`).FindSubmatch(b)
	require.NotNil(t, m, "galaxy.yml has no version line")
	require.Equal(t, string(m[1]), Collection, "internal/version.Collection must follow galaxy.yml's version")
}

func TestStringShowsReleaseAndBuild(t *testing.T) {
	defer func(v, c string) { Version, Collection = v, c }(Version, Collection)
	Version, Collection = "830128e-dirty", "0.1.0"
	require.Equal(t, "0.1.0 (build 830128e-dirty)", String())
	Version = "v0.1.0"
	require.Equal(t, "0.1.0", String())
}

func TestUpstreamPutsTheServerReleaseFirst(t *testing.T) {
	defer func(v, c, s string) { Version, Collection, ServerRelease = v, c, s }(Version, Collection, ServerRelease)
	Version, Collection, ServerRelease = "830128e", "0.1.0", "v1.4.0"
	require.Equal(t, "v1.4.0 (flightctl.dr 0.1.0 (build 830128e))", Upstream())
}
