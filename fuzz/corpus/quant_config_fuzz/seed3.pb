0R

hello world