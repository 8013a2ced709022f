//! Image sizes and layers, learned from `image` events as they stream past.
//!
//! Images and layers are interned to small integers so that the simulator's
//! per-node sets stay compact and cheap to look up.

use crate::event::Image;
use crate::intern::Interner;
use rustc_hash::FxHashMap as HashMap;

/// An interned image.
pub type ImageId = u32;
/// An interned layer.
pub type LayerId = u32;

#[derive(Debug)]
struct Entry {
    /// Size from an `image` event, when one has been seen.
    bytes: Option<u64>,
    /// Layers from an `image` event; otherwise one pseudo-layer of its own.
    layers: Vec<LayerId>,
    /// Whether a pull ever had to guess this image's size.
    defaulted: bool,
}

/// What the replay knows about images so far.
#[derive(Debug)]
pub struct Catalog {
    default_bytes: u64,
    names: Interner,
    images: Vec<Entry>,
    layer_ids: HashMap<String, LayerId>,
    /// Bytes of each layer; `None` for the pseudo-layer of an unsized image.
    layer_bytes: Vec<Option<u64>>,
    /// The image a pseudo-layer stands for.
    pseudo_owner: Vec<Option<ImageId>>,
}

impl Catalog {
    /// An empty catalogue; images with no known size weigh `default_bytes`.
    pub fn new(default_bytes: u64) -> Self {
        Self {
            default_bytes,
            names: Interner::default(),
            images: Vec::new(),
            layer_ids: HashMap::default(),
            layer_bytes: Vec::new(),
            pseudo_owner: Vec::new(),
        }
    }

    fn new_layer(&mut self, bytes: Option<u64>, owner: Option<ImageId>) -> LayerId {
        self.layer_bytes.push(bytes);
        self.pseudo_owner.push(owner);
        (self.layer_bytes.len() - 1) as LayerId
    }

    /// The id of `image`, interning it on first sight.
    pub fn intern(&mut self, image: &str) -> ImageId {
        let id = self.names.intern(image);
        if (id as usize) < self.images.len() {
            return id;
        }
        let layer = self.new_layer(None, Some(id));
        self.images.push(Entry {
            bytes: None,
            layers: vec![layer],
            defaulted: false,
        });
        id
    }

    /// Records an `image` event: its size and layers.
    pub fn learn(&mut self, image: &Image) {
        let id = self.intern(&image.image);
        let layers = match &image.layers {
            Some(layers) if !layers.is_empty() => layers
                .iter()
                .map(|l| match self.layer_ids.get(&l.digest) {
                    Some(&lid) => lid,
                    None => {
                        let lid = self.new_layer(Some(l.bytes), None);
                        self.layer_ids.insert(l.digest.clone(), lid);
                        lid
                    }
                })
                .collect(),
            _ => {
                let own = self.images[id as usize].layers[0];
                if self.pseudo_owner[own as usize] == Some(id) {
                    vec![own]
                } else {
                    vec![self.new_layer(None, Some(id))]
                }
            }
        };
        let entry = &mut self.images[id as usize];
        entry.bytes = Some(image.bytes);
        entry.layers = layers;
    }

    /// The layers of `image`, as a pull started now would fetch them.
    pub fn layers(&self, image: ImageId) -> &[LayerId] {
        &self.images[image as usize].layers
    }

    /// The size of `layer`; a pseudo-layer weighs its image's size or the
    /// default, and marks the image as guessed.
    pub fn layer_bytes(&mut self, layer: LayerId) -> u64 {
        if let Some(b) = self.layer_bytes[layer as usize] {
            return b;
        }
        let Some(owner) = self.pseudo_owner[layer as usize] else {
            return self.default_bytes;
        };
        let entry = &mut self.images[owner as usize];
        match entry.bytes {
            Some(b) => b,
            None => {
                entry.defaulted = true;
                self.default_bytes
            }
        }
    }

    /// The name of `image`.
    pub fn name(&self, image: ImageId) -> &str {
        self.names.name(image)
    }

    /// The size of `image` as a whole, layers summed without sharing.
    pub fn image_bytes(&self, image: ImageId) -> u64 {
        self.images[image as usize]
            .bytes
            .unwrap_or(self.default_bytes)
    }

    /// How many images a pull had to give the default size.
    pub fn defaulted_images(&self) -> u64 {
        self.images.iter().filter(|e| e.defaulted).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Layer;

    #[test]
    fn shared_layers_intern_once_and_unknown_sizes_are_counted() {
        let mut c = Catalog::new(100);
        let layer = |d: &str, b| Layer {
            digest: d.into(),
            bytes: b,
        };
        c.learn(&Image {
            image: "a".into(),
            bytes: 30,
            layers: Some(vec![layer("sha256:base", 10), layer("sha256:a", 20)]),
        });
        c.learn(&Image {
            image: "b".into(),
            bytes: 15,
            layers: Some(vec![layer("sha256:base", 10), layer("sha256:b", 5)]),
        });
        let a = c.intern("a");
        let b = c.intern("b");
        assert_eq!(c.layers(a)[0], c.layers(b)[0]);
        assert_ne!(c.layers(a)[1], c.layers(b)[1]);
        let u = c.intern("unknown");
        let l = c.layers(u)[0];
        assert_eq!(c.layer_bytes(l), 100);
        assert_eq!(c.defaulted_images(), 1);
        let l = c.layers(a)[1];
        assert_eq!(c.layer_bytes(l), 20);
        assert_eq!(c.defaulted_images(), 1);
    }
}
