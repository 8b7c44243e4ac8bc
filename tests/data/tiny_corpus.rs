// Training text of the tiny test model and its tokenizer (scripts/make_test_model.py). Written for
// hyco's tests; the greetings hold multi-byte UTF-8 (the 🦀 is four byte tokens in that vocabulary).
use std::collections::HashMap;
use std::fmt;

/// A point in the plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub fn new(x: f64, y: f64) -> Self {
        Point { x, y }
    }

    pub fn distance(&self, other: &Point) -> f64 {
        let dx = self.x - other.x;
        let dy = self.y - other.y;
        (dx * dx + dy * dy).sqrt()
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

pub fn fibonacci(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        let next = a + b;
        a = b;
        b = next;
    }
    a
}

pub enum Shape {
    Circle { center: Point, radius: f64 },
    Rectangle { min: Point, max: Point },
}

impl Shape {
    pub fn area(&self) -> f64 {
        match self {
            Shape::Circle { radius, .. } => std::f64::consts::PI * radius * radius,
            Shape::Rectangle { min, max } => (max.x - min.x) * (max.y - min.y),
        }
    }
}

/// Greetings in a few languages: "café" (é), "grüße" (ü), "你好" (CJK) and the crab.
pub fn greetings() -> Vec<&'static str> {
    vec!["café au lait", "grüße aus München", "你好，世界", "hello 🦀 crab"]
}

pub fn mascot() -> String {
    // Ferris the crab: 🦀 says héllo
    String::from("🦀 Ferris")
}

fn main() {
    let p = Point::new(1.0, 2.0);
    let q = Point::new(4.0, 6.0);
    println!("distance from {} to {} is {}", p, q, p.distance(&q));
    let counts = word_counts("the quick brown fox jumps over the lazy dog");
    if let Some(n) = counts.get("the") {
        println!("'the' appears {} times", n);
    }
    for i in 0..10 {
        println!("fib({}) = {}", i, fibonacci(i));
    }
    let shapes = vec![
        Shape::Circle { center: p, radius: 1.5 },
        Shape::Rectangle { min: p, max: q },
    ];
    let total: f64 = shapes.iter().map(|s| s.area()).sum();
    println!("total area: {:.2}", total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_symmetric() {
        let a = Point::new(0.0, 0.0);
        let b = Point::new(3.0, 4.0);
        assert_eq!(a.distance(&b), 5.0);
        assert_eq!(b.distance(&a), 5.0);
    }

    #[test]
    fn fibonacci_starts_right() {
        assert_eq!(fibonacci(0), 0);
        assert_eq!(fibonacci(1), 1);
        assert_eq!(fibonacci(10), 55);
    }
}
