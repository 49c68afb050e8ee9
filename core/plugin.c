/* herd — placeholder, being written */
