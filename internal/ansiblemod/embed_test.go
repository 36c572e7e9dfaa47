package ansiblemod

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

type sharedOptions struct {
	Limit int `ansible:"limit" default:"7" min:"1"`
}

type embeddingOptions struct {
	Name string `ansible:"name"`
	sharedOptions
}

type clashingOptions struct {
	Limit int `ansible:"limit"`
	sharedOptions
}

// An embedded struct without a tag lends its options: they decode, default and validate
// as if declared in the outer struct, and a name declared twice is refused.
func TestEmbeddedOptions(t *testing.T) {
	specs, err := Specs(&embeddingOptions{})
	require.NoError(t, err)
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	require.Equal(t, []string{"name", "limit"}, names)

	var o embeddingOptions
	require.NoError(t, Decode(map[string]json.RawMessage{"limit": json.RawMessage(`"3"`)}, &o))
	require.Equal(t, 3, o.Limit)

	o = embeddingOptions{}
	require.NoError(t, Decode(map[string]json.RawMessage{}, &o))
	require.Equal(t, 7, o.Limit)

	err = Decode(map[string]json.RawMessage{"limit": json.RawMessage(`0`)}, &embeddingOptions{})
	require.ErrorContains(t, err, "limit")

	_, err = Specs(&clashingOptions{})
	require.ErrorContains(t, err, `option "limit" declared twice`)
}
